"""One command, one scenario (or the whole table), the services side by side.

    python -m bench.run --scenario s200            # 50 clients, 5 events, 200 votes/s
    python -m bench.run --scenario all --markdown results.md
    python -m bench.run --clients 1000 --rate 300 --duration 15 --targets partysense

The targets: partysense-live, the old Node service, and the asyncio reference
(bench/asyncio_bridge.py), the floor of a plain Python bridge; and
``partysense-wal``, the same daemon with ``--source wal`` (docs/operations.md
§13) on the same database put in WAL mode for its turn (sql/wal.sql: no
triggers, a publication; the listen mode's triggers back afterwards), so that
both sources run side by side. A vote's delay is measured the same way for
every target: from just before the voter's INSERT (its commit, autocommit) to
the frame's arrival at the client. Each target, in
turn, gets the same fresh database, the same triggers and the same scenario:
start the service, connect the clients (the Node load generator), wait until
every client has received a warm-up vote (so every subscription is live), then
insert votes at the rate for the duration, wait for the frames, and stop the
service. See docs/performance.md for what the columns mean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import database, services
from bench.clients import LoadGens
from bench.monitor import CpuMeter, Monitor
from bench.votes import Generator
from partysense.process.limits import raise_open_files_limit

TARGETS = ("asyncio", "node", "partysense", "partysense-wal")
# The targets that are partysense-live (listen mode, and --source wal).
DAEMONS = ("partysense", "partysense-wal")
AVAILABLE: dict[str, Callable[[], bool]] = {
    "asyncio": services.asyncio_available, "node": services.node_available}


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int = 50
    events: int = 5
    firehose: float = 0.2          # share of clients on {"event": "ALL"}
    rate: float = 200.0            # votes per second
    duration: float = 20.0         # seconds of voting
    stalled: int = 0               # clients that subscribe and never read
    loadgens: int = 1              # load generator processes
    sources: int = 1               # 127.0.0.x source addresses
    workers: int = 1               # partysense-live --workers
    write_delay: float = 0.0       # partysense-live --write-delay (milliseconds)
    tree: str | None = None        # another checkout whose .venv's twistd to run (before/after)
    targets: tuple[str, ...] = TARGETS

    def describe(self) -> str:
        text = (f"{self.clients} clients, {self.events} events, "
                f"{self.firehose:.0%} firehose, {self.rate:g} votes/s for {self.duration:g} s")
        if self.stalled:
            text += f", {self.stalled} stalled"
        if self.workers != 1:
            text += f", --workers {self.workers}"
        if self.write_delay:
            text += f", --write-delay {self.write_delay:g}"
        return text


SCENARIOS = {
    "smoke": Scenario("smoke", clients=6, events=2, firehose=0.34, rate=50, duration=2),
    "s200": Scenario("s200", rate=200),
    "s500": Scenario("s500", rate=500),
    "stalled": Scenario("stalled", rate=500, stalled=10, duration=60),
    "c1000": Scenario("c1000", clients=1000, rate=100),
    "idle50k": Scenario("idle50k", clients=50_000, rate=5, loadgens=4, sources=4, workers=4,
                        targets=("partysense",)),
    "max": Scenario("max", clients=1000, rate=400, loadgens=2),
}
TABLE = ("s200", "s500", "stalled", "c1000", "idle50k", "max")


def subscriptions(scenario: Scenario, events: list[int]) -> list[Any]:
    """Client i's request: the firehose for the first share, else the events in turn."""
    firehose = round(scenario.clients * scenario.firehose)
    return ["ALL"] * firehose + [events[n % len(events)]
                                 for n in range(scenario.clients - firehose)]


def run_target(target: str, scenario: Scenario, dsn: str, party: tuple[list[int], list[int]],
               generator: Generator, own_backends: list[int], workdir: Path,
               profile: Path | None = None, mode: str = "websocket") -> dict[str, Any]:
    """One service under one scenario; ``mode``: its clients are WebSockets or
    SSE streams (bench/sse.py)."""
    if target == "asyncio":
        # The floor of a Python bridge runs on the seed's triggers (bench/seed_triggers.sql).
        with database.seed_triggers(dsn):
            return _run_target(target, scenario, dsn, party, generator, own_backends,
                               workdir, profile, mode)
    if target == "partysense-wal":
        # The WAL source on the same database, put in WAL mode for this turn.
        with database.wal_mode(dsn):
            return _run_target(target, scenario, dsn, party, generator, own_backends,
                               workdir, profile, mode)
    return _run_target(target, scenario, dsn, party, generator, own_backends, workdir,
                       profile, mode)


def _run_target(target: str, scenario: Scenario, dsn: str, party: tuple[list[int], list[int]],
                generator: Generator, own_backends: list[int], workdir: Path,
                profile: Path | None, mode: str) -> dict[str, Any]:
    events, _tracks = party
    monitor = Monitor(dsn, own_backends)
    if target == "node":
        service = services.start_node(dsn, workdir)
    elif target == "asyncio":
        service = services.start_asyncio(dsn, workdir)
    else:
        twistd = str(Path(scenario.tree) / ".venv" / "bin" / "twistd") if scenario.tree else None
        service = services.start_partysense(
            dsn, workdir, workers=scenario.workers, write_delay=scenario.write_delay,
            twistd=twistd, source="wal" if target == "partysense-wal" else "listen")
    gens = None
    rss_before = _rss(service.pid)
    try:
        stalled_subs = [events[n % len(events)] if n % 5 else "ALL"
                        for n in range(scenario.stalled)]
        sources = [f"127.0.0.{n + 1}" for n in range(scenario.sources)]
        gens = LoadGens(service.port, subscriptions(scenario, events), stalled_subs,
                        scenario.loadgens, sources, mode)
        connected = gens.connected()
        log(f"  {target}: {connected['open']} connected, {connected['failed']} failed "
            f"in {connected['seconds']:.1f} s")
        warm_up_votes = generator.warm_up(
            lambda: (lambda s: (s["warm"], s["open"]))(gens.status()),
            timeout=max(15.0, scenario.clients / 1000))
        warm = gens.status()
        log(f"  {target}: {warm['warm']}/{warm['open']} clients live "
            f"after {warm_up_votes} warm-up votes")
        ids = generator.reserve_ids(max(1, round(scenario.rate * scenario.duration)))
        gens.measure(ids[0], ids[-1])
        monitor.start(service.pid, gens.pids)
        profiler = start_profiler(profile, target, scenario, service.pid)
        sent = generator.run(ids, scenario.rate, deadline_s=scenario.duration * 1.5 + 5)
        votes_path = workdir / f"votes-{target}-{mode}.json"
        votes_path.write_text(json.dumps({"votes": sent.votes}))
        delivered = gens.finish(votes_path, settle_ms=3000, max_wait_ms=60_000)
        usage = monitor.stop()
        stop_profiler(profiler)
        log(f"  {target}: {delivered['delivered']}/{delivered['expected']} frames delivered")
    finally:
        if gens is not None:
            gens.close()
        exited = None if service.alive() else service.process.returncode
        service.stop()
    summary = summarise(target, scenario, connected, sent, delivered, asdict(usage), exited,
                        len(gens.pids))
    summary["load_average"] = os.getloadavg()[0]
    summary["service_rss_before_clients_mb"] = rss_before / 2**20
    summary["service_rss_per_client_kb"] = (
        (usage.service_rss_start - rss_before) / 1024 / max(1, connected["open"]))
    return summary


def _rss(pid: int) -> float:
    """The resident memory of a process and its children (the workers), in bytes."""
    meter = CpuMeter([pid])
    return meter.sample()


def start_profiler(directory: Path | None, target: str, scenario: Scenario,
                   pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy on the daemon during the voting (the measured window), if asked for."""
    if directory is None or target not in DAEMONS:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / f"{target}-{scenario.name}.txt"
    # --nonblocking: never pause the daemon; raw (collapsed) stacks for reading.
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--rate", "250", "--nonblocking",
         "--subprocesses", "--format", "raw", "-o", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(30)
        except subprocess.TimeoutExpired:
            profiler.kill()


def summarise(target: str, scenario: Scenario, connected: dict[str, Any], sent: Any,
              delivered: dict[str, Any], usage: dict[str, Any], exited: int | None,
              loadgens: int) -> dict[str, Any]:
    span = (delivered["last_arrival_ns"] - sent.started_ns) / 1e9
    frames_per_s = delivered["delivered"] / span if span > 0 else 0.0
    seconds = usage["seconds"] or 1.0
    cpu_share = {
        "service": usage["service_cpu_s"] / seconds / max(1, scenario.workers
                                                          if target in DAEMONS else 1),
        "PostgreSQL": usage["postgres_cpu_s"] / seconds / (os.cpu_count() or 1),
        "load generator": usage["loadgen_cpu_s"] / seconds / loadgens,
        "vote generator": usage["generator_cpu_s"] / seconds,
    }
    total_cpu = (usage["service_cpu_s"] + usage["postgres_cpu_s"] + usage["loadgen_cpu_s"]
                 + usage["generator_cpu_s"]) / seconds
    bound = max(cpu_share, key=lambda k: cpu_share[k])
    if total_cpu > 0.9 * (os.cpu_count() or 1):
        limit = f"the box's {os.cpu_count()} cores ({total_cpu:.0%} of a core in all)"
    elif cpu_share[bound] > 0.85:
        limit = f"{bound} ({cpu_share[bound]:.0%} of its core)"
    else:
        limit = "none saturated"
    return {
        "target": target,
        "scenario": scenario.name,
        "clients_connected": connected["open"],
        "clients_failed": connected["failed"],
        "connect_failures": connected["failures"],
        "clients_dropped": delivered["dropped"],
        "drop_codes": delivered["dropCodes"],
        "stalled": delivered["stalled"],
        "votes_sent": len(sent.votes),
        "vote_errors": sent.errors,
        "vote_rate": sent.rate,
        "schedule_late_max_s": sent.late_max_s,
        "commit_p50_s": sent.commit_quantile(0.5),
        "commit_p99_s": sent.commit_quantile(0.99),
        "frames_expected": delivered["expected"],
        "frames_delivered": delivered["delivered"],
        "frames_lost": delivered["lost"],
        "frames_duplicated": delivered["duplicated"],
        "frames_unexpected": delivered["unexpected"],
        "latency_p50_s": delivered["latency_p50_s"],
        "latency_p90_s": delivered["latency_p90_s"],
        "latency_p99_s": delivered["latency_p99_s"],
        "latency_max_s": delivered["latency_max_s"],
        "frames_per_s": frames_per_s,
        "service_cpu_s": usage["service_cpu_s"],
        "service_cpu_us_per_frame": (usage["service_cpu_s"] * 1e6 / delivered["delivered"]
                                     if delivered["delivered"] else math.nan),
        "service_rss_peak_mb": usage["service_rss_peak"] / 2**20,
        "service_rss_start_mb": usage["service_rss_start"] / 2**20,
        "service_rss_mid_mb": usage["service_rss_mid"] / 2**20,
        "service_rss_end_mb": usage["service_rss_end"] / 2**20,
        "service_exited": exited,
        "postgres_backends_peak": usage["backends_peak"],
        "postgres_cpu_s": usage["postgres_cpu_s"],
        "postgres_cpu_us_per_vote": (usage["postgres_cpu_s"] * 1e6 / len(sent.votes)
                                     if sent.votes else math.nan),
        "loadgen_cpu_s": usage["loadgen_cpu_s"],
        "loadgen_processes": loadgens,
        "generator_cpu_s": usage["generator_cpu_s"],
        "seconds": seconds,
        "limit": limit,
        "cores_used": total_cpu,
    }


# Runs one side of a comparison: (dsn, party, vote generator, its own backends) -> figures.
Side = Callable[[str, tuple[list[int], list[int]], Generator, list[int]], dict[str, Any]]


def run_sides(scenario: Scenario, admin_dsn: str, heading: str,
              sides: dict[str, tuple[str, Side]]) -> dict[str, Any]:
    """Each side in turn (name -> (its target, how to run it)) on one bench database,
    party and vote generator; a side that crashes is a result, not the end."""
    results: dict[str, Any] = {"scenario": asdict(scenario), "describe": scenario.describe()}
    log(heading)
    # With --tree, that checkout's own triggers: its daemon reads what it was written for.
    tree = Path(scenario.tree) if scenario.tree else None
    with database.bench_database(admin_dsn, tree) as dsn:
        party = database.create_party(dsn, scenario.events)
        generator = Generator(dsn, *party)
        own = generator.connect(Generator.threads_for(scenario.rate))
        try:
            for name, (target, run) in sides.items():
                try:
                    results[name] = run(dsn, party, generator, own)
                except Exception as error:
                    log(f"  {name}: FAILED: {error}")
                    results[name] = {"target": target, "error": str(error)}
        finally:
            generator.close()
    return results


def run_scenario(scenario: Scenario, admin_dsn: str, workdir: Path,
                 profile: Path | None = None) -> dict[str, Any]:
    targets = [t for t in scenario.targets if AVAILABLE.get(t, lambda: True)()]

    def side(target: str) -> Side:
        return lambda dsn, party, generator, own: run_target(
            target, scenario, dsn, party, generator, own, workdir, profile)

    return run_sides(scenario, admin_dsn, f"== {scenario.name}: {scenario.describe()}",
                     {target: (target, side(target)) for target in targets})


# -- printing ---------------------------------------------------------------

def _ms(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 1e3:.1f} ms"


ROWS: list[tuple[str, Any]] = [
    ("clients connected / failed / dropped",
     lambda r: f"{r['clients_connected']} / {r['clients_failed']} / {r['clients_dropped']}"),
    ("stalled clients: closed by server (codes) / open",
     lambda r: ("-" if not r["stalled"]["count"] else
                f"{sum(r['stalled']['closeCodes'].values())} "
                f"({', '.join(sorted(r['stalled']['closeCodes'])) or '-'}) / "
                f"{r['stalled']['stillOpen']}")),
    ("votes sent (achieved rate)", lambda r: f"{r['votes_sent']} ({r['vote_rate']:.0f}/s)"),
    ("INSERT + COMMIT round trip p50 / p99",
     lambda r: f"{_ms(r['commit_p50_s'])} / {_ms(r['commit_p99_s'])}"),
    ("frames expected", lambda r: f"{r['frames_expected']}"),
    ("frames delivered", lambda r: f"{r['frames_delivered']}"),
    ("frames lost / duplicated",
     lambda r: f"{r['frames_lost']} / {r['frames_duplicated']}"),
    ("latency p50", lambda r: _ms(r["latency_p50_s"])),
    ("latency p90", lambda r: _ms(r["latency_p90_s"])),
    ("latency p99", lambda r: _ms(r["latency_p99_s"])),
    ("latency max", lambda r: _ms(r["latency_max_s"])),
    ("delivered frames/s", lambda r: f"{r['frames_per_s']:.0f}"),
    ("service CPU (s, % of a core)",
     lambda r: f"{r['service_cpu_s']:.2f} s ({r['service_cpu_s'] / r['seconds']:.0%})"),
    ("service CPU per delivered frame", lambda r: f"{r['service_cpu_us_per_frame']:.1f} µs"),
    ("service RSS peak (start -> end)",
     lambda r: f"{r['service_rss_peak_mb']:.1f} MB ({r['service_rss_start_mb']:.1f} -> "
               f"{r['service_rss_end_mb']:.1f})"),
    ("service RSS per connected client",
     lambda r: f"{r['service_rss_per_client_kb']:.1f} KB "
               f"(from {r['service_rss_before_clients_mb']:.1f} MB without clients)"),
    ("PostgreSQL backends (peak)", lambda r: f"{r['postgres_backends_peak']}"),
    ("PostgreSQL CPU", lambda r: f"{r['postgres_cpu_s']:.2f} s"),
    ("PostgreSQL CPU per vote (all backends)",
     lambda r: f"{r['postgres_cpu_us_per_vote']:.1f} µs"),
    ("load generator CPU (processes)",
     lambda r: f"{r['loadgen_cpu_s']:.2f} s ({r['loadgen_processes']})"),
    ("vote generator CPU", lambda r: f"{r['generator_cpu_s']:.2f} s"),
    ("cores used by all of the above", lambda r: f"{r['cores_used']:.2f} of {os.cpu_count()}"),
    ("saturated", lambda r: r["limit"]),
    ("box load average (1 min, at the end)", lambda r: f"{r['load_average']:.1f}"),
    ("service exited during the run",
     lambda r: "no" if r["service_exited"] is None else f"yes ({r['service_exited']})"),
]

RATIOS = {
    "frames delivered": "frames_delivered",
    "latency p50": "latency_p50_s", "latency p90": "latency_p90_s",
    "latency p99": "latency_p99_s", "latency max": "latency_max_s",
    "delivered frames/s": "frames_per_s",
    "service CPU per delivered frame": "service_cpu_us_per_frame",
    "service RSS peak (start -> end)": "service_rss_peak_mb",
    "PostgreSQL backends (peak)": "postgres_backends_peak",
    "service RSS per connected client": "service_rss_per_client_kb",
    "PostgreSQL CPU": "postgres_cpu_s",
    "PostgreSQL CPU per vote (all backends)": "postgres_cpu_us_per_vote",
}


def _cell(result: dict[str, Any] | None, render: Any) -> str:
    if result is None:
        return "not run"
    if "error" in result:
        return "failed"
    try:
        return str(render(result))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return "-"


def _ratio(results: dict[str, Any], key: str | None, base: str) -> str:
    """partysense-live's figure over ``base``'s (a target's name), or blank."""
    other, ours = results.get(base), results.get("partysense")
    if key is None or not other or not ours or "error" in other or "error" in ours:
        return ""
    a, b = ours.get(key), other.get(key)
    if not a or not b or math.isnan(a) or math.isnan(b):
        return ""
    return f"{a / b:.3g}"


def table(results: dict[str, Any]) -> str:
    """A Markdown table: one row per measure, a column per target, then
    partysense-live over Node and over the asyncio reference."""
    lines = [f"**{results['scenario']['name']}**: {results['describe']}", "",
             "| | asyncio (floor) | Node (seed) | partysense-live | partysense-live "
             "--source wal | partysense / Node | partysense / asyncio |",
             "|---|---|---|---|---|---|---|"]
    for target in TARGETS:
        failed = results.get(target) or {}
        if "error" in failed:
            lines.insert(2, f"{target}: FAILED: {failed['error']}\n")
    for label, render in ROWS:
        cells = [_cell(results.get(target), render) for target in TARGETS]
        ratios = [_ratio(results, RATIOS.get(label), base) for base in ("node", "asyncio")]
        lines.append(f"| {label} | {' | '.join(cells + ratios)} |")
    return "\n".join(lines) + "\n"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="s200",
                        help=f"one of {', '.join(SCENARIOS)}, or 'all' for {', '.join(TABLE)}")
    parser.add_argument("--dsn", help="an admin DSN (may CREATE DATABASE); default: embedded")
    for name, kind in (("clients", int), ("events", int), ("firehose", float),
                       ("rate", float), ("duration", float), ("stalled", int),
                       ("loadgens", int), ("sources", int), ("workers", int),
                       ("write_delay", float)):
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind,
                            help=f"override the scenario's {name}")
    parser.add_argument("--targets", help="comma-separated, of: " + ",".join(TARGETS))
    parser.add_argument("--tree", help="run partysense-live from this checkout's .venv "
                                       "(another version, for before/after in one sitting)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--keep-logs", type=Path,
                        help="write the services' logs here (default: a temp dir, removed)")
    parser.add_argument("--profile", type=Path,
                        help="py-spy the daemon while votes flow; collapsed stacks go here")
    return parser.parse_args(argv)


def scenarios_from(args: argparse.Namespace) -> list[Scenario]:
    names = TABLE if args.scenario == "all" else (args.scenario,)
    chosen = []
    for name in names:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}, all")
        scenario = SCENARIOS[name]
        overrides = {key: getattr(args, key) for key in
                     ("clients", "events", "firehose", "rate", "duration", "stalled",
                      "loadgens", "sources", "workers", "write_delay")
                     if getattr(args, key) is not None}
        if args.tree:
            overrides["tree"] = str(Path(args.tree).resolve())
        if args.targets:
            overrides["targets"] = tuple(t for t in args.targets.split(",") if t in TARGETS)
        chosen.append(replace(scenario, **overrides))
    return chosen


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    raise_open_files_limit()  # children (load generators) inherit it
    scenarios = scenarios_from(args)
    all_results = []
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="partysense-bench-") as scratch, \
            database.server(args.dsn) as admin_dsn:
        workdir = args.keep_logs or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        for scenario in scenarios:
            results = run_scenario(scenario, admin_dsn, workdir, args.profile)
            all_results.append(results)
            print(table(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=1, default=str))
    if args.markdown:
        command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
        args.markdown.write_text(f"Run {started}: `{command}`\n\n"
                                 + "\n".join(table(r) for r in all_results))
    return all_results


if __name__ == "__main__":
    main()
