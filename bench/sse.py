"""Server-Sent Events against WebSockets: the daemon's CPU per delivered frame, one run.

    python -m bench.sse --clients 1000 --rate 100 --duration 20
    python -m bench.sse --clients 20 --rate 20 --duration 3        # smoke size

One database, one party, the same vote plan; the daemon is started fresh for
each side, and the same load generator (bench/loadgen/loadgen.js, with
``"mode": "sse"`` for the streams) connects N seed WebSocket clients, then N
SSE clients (/events/<id>/stream, 20 % on /events/ALL/stream), waits until
every one has had a warm-up change, inserts votes at the rate, and checks
every frame (lost, duplicated, latency) exactly as bench/run.py does. The
figure that matters: service CPU per delivered frame, WebSocket and SSE side
by side (issue 11: SSE must cost no more).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import database
from bench.run import ROWS, Scenario, Side, _cell, log, run_sides, run_target
from partysense.process.limits import raise_open_files_limit

SIDES = ("websocket", "sse")


def compare(scenario: Scenario, admin_dsn: str, workdir: Path) -> dict[str, Any]:
    def side(mode: str) -> Side:
        def run(dsn: str, party: Any, generator: Any, own: list[int]) -> dict[str, Any]:
            log(f"  -- {mode}")
            return run_target("partysense", scenario, dsn, party, generator, own, workdir,
                              mode=mode)
        return run

    return run_sides(scenario, admin_dsn, f"== SSE vs WebSocket: {scenario.describe()}",
                     {mode: ("partysense", side(mode)) for mode in SIDES})


def table(results: dict[str, Any]) -> str:
    lines = [f"**SSE vs WebSocket**: {results['describe']}", "",
             "| | WebSocket (seed) | SSE | SSE / WebSocket |", "|---|---|---|---|"]
    ws, sse = results.get("websocket"), results.get("sse")
    for label, render in ROWS:
        ratio = ""
        if label == "service CPU per delivered frame" and ws and sse \
                and "error" not in ws and "error" not in sse:
            a, b = sse["service_cpu_us_per_frame"], ws["service_cpu_us_per_frame"]
            if not (math.isnan(a) or math.isnan(b)) and b:
                ratio = f"{a / b:.3g}"
        lines.append(f"| {label} | {_cell(ws, render)} | {_cell(sse, render)} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.sse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="an admin DSN (may CREATE DATABASE); default: embedded")
    parser.add_argument("--clients", type=int, default=1000, help="clients on each side")
    parser.add_argument("--events", type=int, default=5)
    parser.add_argument("--firehose", type=float, default=0.2,
                        help="share of clients on every event (ALL)")
    parser.add_argument("--rate", type=float, default=100.0, help="votes per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of voting")
    parser.add_argument("--loadgens", type=int, default=1, help="load generator processes")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep-logs", type=Path, help="keep the daemons' logs here")
    args = parser.parse_args(argv)
    raise_open_files_limit()  # the load generators inherit it
    scenario = Scenario("sse", clients=args.clients, events=args.events,
                        firehose=args.firehose, rate=args.rate, duration=args.duration,
                        loadgens=args.loadgens, targets=("partysense",))
    with tempfile.TemporaryDirectory(prefix="partysense-bench-") as scratch, \
            database.server(args.dsn) as admin_dsn:
        workdir = args.keep_logs or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        results = compare(scenario, admin_dsn, workdir)
    print(table(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    failed = [side for side in SIDES if "error" in (results.get(side) or {"error": 1})]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
    return results


if __name__ == "__main__":
    main()
