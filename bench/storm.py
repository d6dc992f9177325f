"""The connect storm: N clients connect and subscribe at once; how long until all are served,
and what each connection costs the daemon.

    python -m bench.storm                                   # 10,000 clients, 20 % v2, 5 events
    python -m bench.storm --clients 2000 --workers 1        # smaller
    python -m bench.storm --tree ../before --tree . --rounds 3 --markdown storm.md

With several ``--tree``s each round runs every tree in turn (its own
``.venv/bin/twistd``), so that before and after are measured in one sitting
on the same box. docs/performance.md ("The connect storm") says what each
figure means; in short, per run:

1. A fresh database with K events, a fresh daemon, no client. A ticker
   commits one vote per event every ``--tick`` seconds from now to the end:
   a seed client is sent nothing until a vote arrives, so its first frame is
   the first vote committed after its subscription was live.
2. ``--pre`` seconds with no client: the daemon's CPU and statements per
   tick of votes alone (subtracted below).
3. Go: the load generator opens every connection (at most ``--concurrency``
   handshakes in flight), each sends its subscription at once: ``{"event": E}``
   (seed) or ``{"type": "subscribe", "event": E}`` (``partysense.v2``).
   A client is ready at its first frame (seed) or its snapshot (v2).
4. Settled when every client is ready. Then ``--tail`` seconds more of ticks
   with everybody connected: the daemon's CPU per delivered frame.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg2

from bench import database, services, statements
from bench.clients import LoadGen
from bench.run import Scenario, stop_profiler
from bench.run import start_profiler as start_py_spy
from bench.stormreport import medians, table
from partysense.process.limits import raise_open_files_limit

HERE = Path(__file__).resolve().parent.parent


class Ticker:
    """One vote per event every ``interval`` seconds, on a connection of its own."""

    def __init__(self, dsn: str, events: list[int], tracks: list[int], interval: float) -> None:
        self._connection = psycopg2.connect(dsn)
        self._connection.autocommit = True
        self._events, self._tracks = events, tracks
        self.interval = interval  # may change while it runs
        self.votes = 0
        self.active = threading.Event()  # ticks only while set
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        cursor = self._connection.cursor()
        n = 0
        while not self._stop.is_set():
            if not self.active.wait(0.05):
                continue
            started = time.monotonic()
            for event_id in self._events:
                track = self._tracks[n % len(self._tracks)]
                cursor.execute("INSERT INTO event_vote (event_id, track_id, user_id) "
                               "VALUES (%s, %s, 0)", (event_id, track))
                n += 1
                self.votes = n
            self._stop.wait(max(0.0, started + self.interval - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._connection.close()


def cpu_and_rss(pids: list[int]) -> tuple[float, float]:
    """CPU seconds and resident bytes of process trees (the daemon and its workers)."""
    cpu = rss = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in tree:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    cpu += times.user + times.system
                    rss += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
    return cpu, rss


class Point:
    """The counters at one moment: CPU and RSS, votes, frames received, statements."""

    def __init__(self, daemon: int, loadgen: int | None, ticker: Ticker, frames: int,
                 counts: statements.Statements) -> None:
        self.at = time.monotonic()
        self.cpu, self.rss = cpu_and_rss([daemon])
        self.loadgen_cpu = cpu_and_rss([loadgen])[0] if loadgen else 0.0
        self.votes = ticker.votes
        self.frames = frames
        self.statements = counts.read()


def tree_label(tree: Path) -> str:
    try:
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return f"{tree.name}@{commit}" if commit else tree.name


def clients_config(args: argparse.Namespace, events: list[int], port: int) -> dict[str, Any]:
    """The load generator's clients: events in turn; which speak v2, the same
    (seeded) choice for every tree, spread over the events and the order of
    connecting; 1,000 per source address (the daemon allows 1,024 per address)."""
    chosen = set(random.Random(4).sample(range(args.clients), round(args.clients * args.v2)))
    return {"port": port, "subscriptions": [events[n % len(events)] for n in range(args.clients)],
            "v2": [int(n in chosen) for n in range(args.clients)],
            "sourceAddresses": [f"127.0.0.{n + 1}"
                                for n in range(max(1, math.ceil(args.clients / 1000)))],
            "concurrency": args.concurrency, "handshakeTimeoutMs": args.timeout * 1000,
            "connectDeadlineMs": args.timeout * 1000, "waitForGo": True}


def run_one(tree: Path, args: argparse.Namespace, admin_dsn: str, workdir: Path,
            profile_to: Path | None) -> dict[str, Any]:
    # Another tree's daemon on that tree's own triggers (bench/database.py says why).
    with database.bench_database(admin_dsn, tree if tree != HERE else None) as dsn:
        events, tracks = database.create_party(dsn, args.events)
        counts = statements.Statements(dsn)
        twistd = str(tree / ".venv" / "bin" / "twistd") if tree != HERE else None
        service = services.start_partysense(counts.daemon_dsn, workdir,
                                             workers=args.workers, twistd=twistd)
        ticker = Ticker(dsn, events, tracks, args.tick)
        gen: LoadGen | None = None
        profiler = None
        try:
            config = clients_config(args, events, service.port)
            seed_clients = args.clients - sum(config["v2"])
            gen = LoadGen(config)
            ticker.start()
            time.sleep(1.0)  # the daemon's first moments and node's start are not "idle"

            def point(frames: int = 0) -> Point:
                assert gen is not None
                return Point(service.pid, gen.pid, ticker, frames, counts)

            idle = point()
            time.sleep(args.pre)
            start = point()
            profiler = start_profiler(profile_to, service.pid)
            gen.send({"cmd": "go"})
            deadline = time.monotonic() + args.timeout
            while True:
                state = gen.ask({"cmd": "frames"}, "frames", 30)
                all_open = state["open"] + state["failed"] >= args.clients
                # Votes from the moment every seed client has sent its
                # subscription until each has had one: v2 clients need none.
                if all_open and state["readySeed"] < seed_clients - state["failed"]:
                    ticker.active.set()
                else:
                    ticker.active.clear()
                if all_open and state["ready"] >= args.clients - state["failed"] - state["dropped"]:
                    break
                if time.monotonic() > deadline:
                    log(f"  not settled in {args.timeout} s: {state}")
                    break
                time.sleep(0.02)
            settle = point(state["frames"])
            stop_profiler(profiler)
            profiler = None
            # With everybody connected: the daemon's CPU per frame of the ticker.
            ticker.interval = args.tail_tick
            ticker.active.set()
            time.sleep(args.tail_tick)
            before_tail = point(gen.ask({"cmd": "frames"}, "frames", 30)["frames"])
            time.sleep(args.tail)
            tail = point(gen.ask({"cmd": "frames"}, "frames", 30)["frames"])
            ready = gen.ask({"cmd": "ready"}, "ready", 60)
        finally:
            stop_profiler(profiler)
            ticker.stop()
            if gen is not None:
                gen.close()
            exited = None if service.alive() else service.process.returncode
            service.stop()
            counts.close()
    return summarise(tree, args, idle, start, settle, before_tail, tail, ready, exited)


def summarise(tree: Path, args: argparse.Namespace, idle: Point, start: Point, settle: Point,
              before_tail: Point, tail: Point, ready: dict[str, Any],
              exited: int | None) -> dict[str, Any]:
    seed_ready = sorted(ready["seedReadyNs"])
    v2_ready = sorted(ready["v2ReadyNs"])
    every = sorted(seed_ready + v2_ready)
    snapshots = len(v2_ready)
    idle_cpu_per_s = (start.cpu - idle.cpu) / (start.at - idle.at)
    # Per frame of the ticker, everybody connected, less what the idle daemon spends.
    tail_s = tail.at - before_tail.at
    tail_frames = tail.frames - before_tail.frames
    cpu_per_frame = max(0.0, (tail.cpu - before_tail.cpu) - idle_cpu_per_s * tail_s) \
        / max(1, tail_frames)
    storm_cpu = settle.cpu - start.cpu
    vote_frames = settle.frames - snapshots
    net_cpu = storm_cpu - vote_frames * cpu_per_frame
    served = len(every)
    window = settle.at - start.at
    kinds = statements.by_kind(statements.difference(start.statements, settle.statements))
    return {
        "tree": tree_label(tree), "clients": args.clients, "events": args.events,
        "v2_share": args.v2, "workers": args.workers, "tick_s": args.tick,
        "connected": ready["open"], "failed": ready["failed"], "dropped": ready["dropped"],
        "failures": ready["failures"], "drop_codes": ready["dropCodes"],
        "ready": served, "ready_seed": len(seed_ready), "ready_v2": snapshots,
        "all_open_s": max(ready["openNs"], default=0) / 1e9,
        "settle_s": (every[-1] / 1e9) if every else math.nan,
        "v2_p50_s": _quantile(v2_ready, 0.5), "v2_p99_s": _quantile(v2_ready, 0.99),
        # From its handshake's answer to its snapshot, per v2 client.
        "v2_wait_p50_s": _quantile(sorted(ready["v2WaitNs"]), 0.5),
        "v2_wait_p99_s": _quantile(sorted(ready["v2WaitNs"]), 0.99),
        "seed_settle_s": (seed_ready[-1] / 1e9) if seed_ready else math.nan,
        "v2_settle_s": (v2_ready[-1] / 1e9) if v2_ready else math.nan,
        "storm_window_s": window,
        "daemon_cpu_s": storm_cpu,
        "daemon_cpu_net_s": net_cpu,
        "daemon_cores": storm_cpu / window if window > 0 else math.nan,
        "idle_cpu_per_s": idle_cpu_per_s,
        "cpu_per_frame_us": cpu_per_frame * 1e6,
        "votes_during_storm": settle.votes - start.votes, "vote_frames_during_storm": vote_frames,
        "cpu_per_client_us": net_cpu * 1e6 / max(1, served),
        "connects_per_cpu_s": served / net_cpu if net_cpu > 0 else math.nan,
        "connects_per_cpu_s_raw": served / storm_cpu if storm_cpu > 0 else math.nan,
        "loadgen_cpu_s": settle.loadgen_cpu - start.loadgen_cpu,
        "statements": kinds,
        "statement_texts": statements.difference(start.statements, settle.statements),
        "rss_before_mb": start.rss / 2**20, "rss_settled_mb": settle.rss / 2**20,
        "rss_per_client_kb": (settle.rss - start.rss) / 1024 / max(1, ready["open"]),
        "load_average": os.getloadavg()[0],
        "daemon_exited": exited,
    }


def _quantile(ordered_ns: list[int], q: float) -> float:
    if not ordered_ns:
        return math.nan
    return ordered_ns[min(len(ordered_ns) - 1, int(q * len(ordered_ns)))] / 1e9


def start_profiler(directory: Path | None, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy on the daemon (its workers too) during the storm, if asked for."""
    return start_py_spy(directory, "partysense", Scenario("storm"), pid)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=5)
    parser.add_argument("--v2", type=float, default=0.2, help="share of partysense.v2 clients")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tree", type=Path, action="append",
                        help="a checkout whose .venv/bin/twistd to run (repeat to compare); "
                             "this checkout runs this interpreter's twistd")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tick", type=float, default=0.1,
                        help="seconds between the ticker's votes (one per event), from the "
                             "moment every client is connected until every one is ready")
    parser.add_argument("--pre", type=float, default=2.0,
                        help="seconds of the idle daemon measured before the storm")
    parser.add_argument("--tail", type=float, default=2.0,
                        help="seconds of ticks after the storm (CPU per frame)")
    parser.add_argument("--tail-tick", type=float, default=0.5,
                        help="seconds between the ticks after the storm")
    parser.add_argument("--concurrency", type=int, default=1000,
                        help="handshakes in flight at once")
    parser.add_argument("--timeout", type=int, default=180)
    parser.add_argument("--dsn", help="an admin DSN (may CREATE DATABASE); default: embedded "
                                      "(with pg_stat_statements loaded)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--keep-logs", type=Path)
    parser.add_argument("--profile", type=Path, help="py-spy the daemon during the storm")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    raise_open_files_limit()
    trees = [tree.resolve() for tree in (args.tree or [HERE])]
    for tree in trees:
        if tree != HERE and not (tree / ".venv" / "bin" / "twistd").exists():
            raise SystemExit(f"{tree}/.venv/bin/twistd: no such file")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    results = []
    with tempfile.TemporaryDirectory(prefix="partysense-storm-") as scratch, \
            statements.server(args.dsn) as admin_dsn:
        workdir = args.keep_logs or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        for round_number in range(args.rounds):
            for tree in trees:
                log(f"== round {round_number + 1}, {tree_label(tree)}: {args.clients} clients "
                    f"({args.v2:.0%} v2), {args.events} events, --workers {args.workers}")
                profile_to = (args.profile / f"{tree.name}-{round_number + 1}"
                              if args.profile else None)
                result = run_one(tree, args, admin_dsn, workdir, profile_to)
                log(f"   settled in {result['settle_s']:.2f} s, "
                    f"{result['connects_per_cpu_s']:.0f} connects per CPU-second")
                results.append(result)
    command = "python -m bench.storm " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"Run {started}: `{command}`\n\n{table(results)}\n{medians(results)}")
    print(text, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.markdown:
        args.markdown.write_text(text)
    return results


if __name__ == "__main__":
    main()
