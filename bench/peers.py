"""partysense-live against its peers, in one sitting: medians of interleaved rounds.

    python -m bench.peers --runs 3 --scenarios s200,s500 --duration 15
    python -m bench.peers --runs 3 --scenarios max --targets partysense --before ../before
    python -m bench.peers --runs 3 --scenarios s200,s500 --targets partysense,partysense-wal

Each round runs every scenario once, and in each scenario every target in turn
(`bench.run`: the asyncio reference, the Node service, partysense-live; with
``--before``, partysense-live from that checkout's .venv too), so that the box's
noise falls on every side alike. Then, per scenario and side, the median of the
rounds, and the ratios issue 17 asks about: CPU per delivered frame and p50
against the asyncio reference's, p99 against the Node service's, PostgreSQL CPU
per vote against the asyncio reference's (on the seed's triggers); with the
``partysense-wal`` target (``--source wal``), the WAL source's figures over the
listen mode's. Every round's figures go to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import run

METRICS = (
    ("CPU per frame (µs)", "service_cpu_us_per_frame", 1.0, "{:.1f}"),
    ("p50 (ms)", "latency_p50_s", 1e3, "{:.2f}"),
    ("p99 (ms)", "latency_p99_s", 1e3, "{:.1f}"),
    ("PostgreSQL CPU per vote (µs)", "postgres_cpu_us_per_vote", 1.0, "{:.0f}"),
)
# (ratio's name, metric, the side it is against)
RATIOS = (
    ("CPU/frame ÷ asyncio", "service_cpu_us_per_frame", "asyncio"),
    ("p50 ÷ asyncio", "latency_p50_s", "asyncio"),
    ("p99 ÷ Node", "latency_p99_s", "node"),
    ("PG CPU/vote ÷ asyncio", "postgres_cpu_us_per_vote", "asyncio"),
)


def rounds(args: argparse.Namespace) -> list[dict[str, dict[str, Any]]]:
    """Per round, scenario -> side -> figures."""
    done = []
    for number in range(1, args.runs + 1):
        this: dict[str, dict[str, Any]] = {}
        for scenario in args.scenarios.split(","):
            common = ["--scenario", scenario, "--targets", args.targets]
            if args.duration:
                common += ["--duration", str(args.duration)]
            if args.dsn:
                common += ["--dsn", args.dsn]
            print(f"== round {number}, {scenario}", file=sys.stderr, flush=True)
            [result] = run.main(common)
            sides = {t: result[t] for t in run.TARGETS if t in result}
            if args.before:
                [before] = run.main(["--scenario", scenario, "--targets", "partysense",
                                     "--tree", args.before]
                                    + common[4:])
                sides["before"] = before["partysense"]
            this[scenario] = sides
        done.append(this)
    return done


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # no NaN
    return statistics.median(values) if values else float("nan")


def table(all_rounds: list[dict[str, dict[str, Any]]]) -> str:
    lines = []
    for scenario in all_rounds[0]:
        sides = list(all_rounds[0][scenario])
        medians = {side: {key: median([r[scenario][side].get(key, float("nan"))
                                       for r in all_rounds if side in r[scenario]])
                          for _, key, _, _ in METRICS}
                   for side in sides}
        lost = {side: sum(r[scenario][side].get("frames_lost", 0) or 0 for r in all_rounds)
                for side in sides}
        lines += [f"\n{scenario}, medians of {len(all_rounds)} rounds:\n",
                  "| | " + " | ".join(sides) + " |",
                  "|---|" + "---|" * len(sides)]
        for name, key, scale, form in METRICS:
            lines.append(f"| {name} | " + " | ".join(
                form.format(medians[side][key] * scale) for side in sides) + " |")
        lines.append("| frames lost (all rounds) | " + " | ".join(
            str(lost[side]) for side in sides) + " |")
        lines += ["", "| partysense-live's ratio | median |", "|---|---|"]
        mine = medians.get("partysense", {})
        for name, key, against in RATIOS:
            if against in medians and mine:
                lines.append(f"| {name} | {mine[key] / medians[against][key]:.2f} |")
        wal = medians.get("partysense-wal")
        if wal and mine:
            for name, key, _, _ in METRICS:
                lines.append(f"| --source wal ÷ listen, {name.split(' (')[0]} | "
                             f"{wal[key] / mine[key]:.2f} |")
        if "before" in medians and mine:
            key = "service_cpu_us_per_frame"
            lines.append(f"| CPU/frame ÷ before | {mine[key] / medians['before'][key]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default="s200,s500")
    parser.add_argument("--targets", default="asyncio,node,partysense")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--before", help="another checkout (with its .venv) to run too")
    parser.add_argument("--dsn", help="an admin DSN (may CREATE DATABASE); default: embedded")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.before:
        args.before = str(Path(args.before).resolve())
    all_rounds = rounds(args)
    if args.json:
        args.json.write_text(json.dumps(all_rounds, indent=1, default=str))
    print(table(all_rounds))


if __name__ == "__main__":
    main()
