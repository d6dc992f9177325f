"""What a flood of forged notifications costs the daemon (issue 17).

    python -m bench.forged_flood                       # 10 s rounds, 20,000 forged/s, 200 votes/s
    python -m bench.forged_flood --duration 5 --rate 5000 --votes 50 --json out.json
    python -m bench.forged_flood --tree ../before      # another checkout's .venv/bin/twistd

Any role that can connect may NOTIFY any channel. The issue's target: "20,000
forged notifications a second (a role with no grants, on ``event_N`` and
``firehose``) cost the daemon <= 2x its idle CPU and no query; real votes' p99
stays within 1.5x."

On a fresh database (bench/database.py; with ``--tree``, that tree's own triggers)
one daemon is started as operators
start it (bench/services.py) and ``--clients`` seed clients subscribe to one
event, and one more to the firehose (``{"event": "ALL"}``), in child processes
(query_load.InnocentSeeds: each vote's delay is its arrival minus the
payload's ``ts``, the commit time). Then four rounds of ``--duration`` s, on
that same daemon and those same clients:

1. idle: nothing happens;
2. votes: ``--votes`` votes/s on the event (one INSERT per transaction);
3. flood: ``--rate`` forged NOTIFYs/s, no votes;
4. votes + flood.

The flood comes from a child process connected as the admin and then ``SET
ROLE`` to a role created for the run with no grants at all. It sends
``SELECT pg_notify(c, t) FROM unnest(channels, texts)`` in autocommit,
``--batch`` notifications per statement, paced to the rate, alternating
between ``event_<id>`` and ``firehose``, and the texts are shaped like the
trigger's: half are the JSON of a change, unsigned, and half are that JSON in
an envelope with a random signature (``ps1 1 <64 hex> <json>``). Every text is
different (a counter in ``vote`` and ``seq``): PostgreSQL drops a (channel,
payload) already notified in the same transaction.

After a flood round the bench waits (up to ``--grace`` s) until the daemon's
``partysense_bad_notifications_total`` stops moving: it may still be reading
the flood's queue. Per round it prints the daemon's CPU seconds over the round
(its threads' schedstat: to the nanosecond, where psutil counts 10 ms ticks)
and as % of a core, against the idle and the votes
rounds, its CPU while it drained what the flood left, the change log reads and
bad notifications counted in /metrics (on the public port: the daemon runs
without ``--admin-port``; "n/a" on a tree without the counter), the flood's
achieved rate, and the votes' delay p50 / p99 (both seed groups pooled) and
losses. The votes' delays are collected once, after the last round, with
``--grace`` s for the stragglers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql

from bench import database, services, statements
from bench.query_load import (
    CpuSeconds,
    InnocentSeeds,
    Voter,
    end_process,
    log,
    postmaster_pid,
    print_table,
    quantile,
)
from partysense.db.sqlfiles import execute_autocommit

ROUNDS = ("idle", "votes", "flood", "votes + flood")
FIREHOSE = "firehose"
# Far above any real vote or seq of the run: a forged change never names a real one.
FORGED_BASE = 10_000_000


# -- the flood (a child process) -----------------------------------------------

def forged_texts(event: int, first: int, count: int, now: float) -> list[str]:
    """``count`` distinct texts shaped like the trigger's, half unsigned, half
    in an envelope whose signature is random."""
    macs = os.urandom(32 * count).hex()
    texts = []
    for k in range(first, first + count):
        body = (f'{{"eid" : {event}, "event" : "Bench party 1", "track" : "Track {k % 20 + 1}", '
                f'"artist" : "Artist {k % 20 + 1}", "tid" : {k % 20 + 1}, "up" : true, '
                f'"op" : "insert", "vote" : {FORGED_BASE + k}, "prev" : null, '
                f'"seq" : {FORGED_BASE + k}, "truncated" : false, "ts" : {now:.3f}}}')
        if k % 2:
            i = 64 * (k - first)
            body = f"ps1 1 {macs[i:i + 64]} {body}"
        texts.append(body)
    return texts


@dataclass
class FloodStats:
    sent: int = 0                 # notifications in statements that returned
    statements: int = 0
    errors: int = 0
    seconds: float = 0.0          # from the window's start to the last statement's return
    late_max_s: float = 0.0       # the furthest behind its schedule the flood fell
    by_channel: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


NOTIFY = "SELECT count(pg_notify(c, t)) FROM unnest(%s::text[], %s::text[]) AS x(c, t)"


def flood(dsn: str, role: str, event: int, rate: float, batch: int, start: float,
          end: float, first: int) -> FloodStats:
    """Forged notifications from ``start`` to ``end`` (epoch s) as ``role``."""
    stats = FloodStats()
    channels = [f"event_{event}", FIREHOSE]
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            n = 0
            while (due := start + n / rate) < end:
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                else:
                    stats.late_max_s = max(stats.late_max_s, -delay)
                texts = forged_texts(event, first + n, batch, time.time())
                names = [channels[k % 2] for k in range(batch)]
                try:
                    cursor.execute(NOTIFY, (names, texts))
                    cursor.fetchone()
                except psycopg2.Error:
                    stats.errors += 1
                else:
                    stats.sent += batch
                    stats.statements += 1
                    for name in channels:
                        stats.by_channel[name] = stats.by_channel.get(name, 0) + names.count(name)
                n += batch
            # Over the window, or longer if the flood fell behind its schedule.
            stats.seconds = max(time.time(), end) - start
    finally:
        connection.close()
    return stats


def flood_main(pipe: Connection, *args: Any) -> None:
    try:
        pipe.send(("done", asdict(flood(*args))))
    except Exception as error:  # reported, not swallowed: the parent prints it
        pipe.send(("failed", repr(error)))
    finally:
        pipe.close()


class Flood:
    """The flood of one round, in a child process (its CPU is not the daemon's)."""

    def __init__(self, *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process: Any = context.Process(target=flood_main, args=(child, *args), daemon=True)
        self.process.start()
        child.close()

    def result(self, timeout: float) -> FloodStats:
        try:
            if not self.pipe.poll(timeout):
                raise RuntimeError(f"the flood: no answer within {timeout:g} s")
            message = self.pipe.recv()
            if message[0] == "failed":
                raise RuntimeError(f"the flood failed: {message[1]}")
            stats = dict(message[1])
            return FloodStats(**stats)
        finally:
            end_process(self.process)


def create_forger(dsn: str) -> str:
    """A role with no grants (PUBLIC's defaults only: CONNECT, pg_notify)."""
    role = f"partysense_forger_{uuid.uuid4().hex[:10]}"
    execute_autocommit(dsn, sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    return role


def drop_forger(dsn: str, role: str) -> None:
    execute_autocommit(dsn, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


class ThreadCpu:
    """CPU seconds of one process's threads to the nanosecond (Linux's schedstat), not
    psutil's clock ticks: an idle daemon uses a few ticks in 10 s, and a ratio to it
    must not be one of rounding. psutil's count where there is no schedstat."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._ticks = CpuSeconds(pid, recursive=False)
        self._start = self._now()

    def _now(self) -> dict[str, int] | None:
        used = {}
        try:
            for task in os.listdir(f"/proc/{self.pid}/task"):
                try:
                    with open(f"/proc/{self.pid}/task/{task}/schedstat") as stat:
                        used[task] = int(stat.read().split()[0])
                except (OSError, ValueError, IndexError):
                    continue  # a thread that just ended
        except OSError:
            return None
        return used or None

    def seconds(self) -> float:
        now = self._now()
        if now is None or self._start is None:
            return self._ticks.seconds()
        return sum(ns - self._start.get(task, 0) for task, ns in now.items()) / 1e9


# -- the daemon's counters ---------------------------------------------------------

COUNTERS = {"reads": "partysense_change_log_reads_total",
            "bad": "partysense_bad_notifications_total",
            "notifications": "partysense_notifications_total"}


def counters(port: int) -> dict[str, float | None]:
    """The daemon's counters from its /metrics (None: this tree has no such counter)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode("utf-8", "replace")
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in COUNTERS.values():
            values[name] = float(value)
    return {key: values.get(name) for key, name in COUNTERS.items()}


def _delta(after: dict[str, float | None], before: dict[str, float | None],
           key: str) -> int | None:
    first, last = before[key], after[key]
    return None if first is None or last is None else int(last - first)


async def drained(port: int, patience: float) -> tuple[dict[str, float | None], float]:
    """The counters once the bad notifications stop moving for a second; how long it took."""
    started = time.monotonic()
    last = await asyncio.to_thread(counters, port)
    still = 0
    while time.monotonic() - started < patience and still < 4:
        await asyncio.sleep(0.25)
        now = await asyncio.to_thread(counters, port)
        still = still + 1 if now == last else 0
        last = now
    return last, max(0.0, time.monotonic() - started - 1.0)


# -- the rounds ------------------------------------------------------------------------

@dataclass
class Round:
    name: str
    seconds: float = 0.0
    daemon_cpu_s: float = 0.0          # over the round's window
    drain_s: float = 0.0               # after the window, until the counters stood still
    drain_cpu_s: float = 0.0           # the daemon's CPU meanwhile
    postgres_cpu_s: float = math.nan
    flood_cpu_s: float = 0.0
    reads: int | None = None           # partysense_change_log_reads_total, window + drain
    bad: int | None = None             # partysense_bad_notifications_total, idem
    notifications: int | None = None   # partysense_notifications_total, idem
    # pg_stat_statements: the daemon's statements (its own role), window + drain
    statements: dict[str, int] | None = None
    statement_texts: dict[str, int] | None = None
    forged: FloodStats | None = None
    votes_sent: int = 0
    vote_ids: list[int] = field(default_factory=list)
    votes_expected: int = 0            # votes_sent x clients
    votes_received: int = 0
    vote_delays_s: list[float] = field(default_factory=list)
    voter_late_max_s: float = 0.0
    vote_errors: int = 0
    load_average: float = 0.0

    @property
    def core_percent(self) -> float:
        return 100 * self.daemon_cpu_s / self.seconds if self.seconds else math.nan


async def _round(result: Round, service: services.Running, dsn: str, event: int,
                 voter: Voter, role: str, args: argparse.Namespace, pg_pid: int,
                 first: int, counts: statements.Statements) -> None:
    votes, flooding = "votes" in result.name, "flood" in result.name
    before = await asyncio.to_thread(counters, service.port)
    calls = await asyncio.to_thread(counts.read)
    # The flood's child process imports for a second or so before its first statement.
    start = time.time() + (2.0 if flooding else 0.5)
    end = start + args.duration
    forged = Flood(dsn, role, event, args.rate, args.batch, start, end, first) \
        if flooding else None
    await asyncio.sleep(max(0.0, start - time.time()))
    daemon_cpu, postgres_cpu = ThreadCpu(service.pid), CpuSeconds(pg_pid) if pg_pid else None
    flood_cpu = CpuSeconds(forged.process.pid) if forged is not None else None
    sent = len(voter.sent)
    errors = voter.errors
    if votes:
        voter.late_max_s = 0.0
        await asyncio.to_thread(voter.run, start, args.duration, args.votes)
    await asyncio.sleep(max(0.0, end - time.time()))
    result.seconds = time.time() - start
    result.daemon_cpu_s = daemon_cpu.seconds()
    result.postgres_cpu_s = postgres_cpu.seconds() if postgres_cpu is not None else math.nan
    result.flood_cpu_s = flood_cpu.seconds() if flood_cpu is not None else 0.0
    result.load_average = os.getloadavg()[0]
    if forged is not None:
        result.forged = await asyncio.to_thread(forged.result, 30)
    after, result.drain_s = await drained(service.port, args.grace)
    result.drain_cpu_s = daemon_cpu.seconds() - result.daemon_cpu_s
    for key in COUNTERS:
        setattr(result, key, _delta(after, before, key))
    result.statement_texts = statements.difference(calls, await asyncio.to_thread(counts.read))
    result.statements = statements.by_kind(result.statement_texts)
    result.vote_ids = voter.sent[sent:]
    result.votes_sent = len(result.vote_ids)
    result.vote_errors = voter.errors - errors
    result.voter_late_max_s = voter.late_max_s if votes else 0.0


async def _sitting(rounds: list[Round], service: services.Running, dsn: str, event: int,
                   tracks: list[int], role: str, args: argparse.Namespace,
                   pg_pid: int, counts: statements.Statements) -> None:
    voter = Voter(dsn, event, tracks)
    lifetime = len(ROUNDS) * (args.duration + args.grace + 5) + args.grace + 60
    groups = [InnocentSeeds(service.port, args.clients, event, lifetime),
              InnocentSeeds(service.port, 1, "ALL", lifetime)]
    try:
        for group in groups:
            await group.warm_up(voter)
        first = 0
        for result in rounds:
            log(f"== {result.name} (load average {os.getloadavg()[0]:.2f} before)")
            await _round(result, service, dsn, event, voter, role, args, pg_pid, first,
                         counts)
            first += int(args.rate * args.duration) + args.batch
            log(f"  daemon {result.daemon_cpu_s:.2f} s CPU (+{result.drain_cpu_s:.2f} s in "
                f"{result.drain_s:.1f} s after), reads {result.reads}, bad {result.bad}, "
                f"forged {result.forged.sent if result.forged else 0}, "
                f"votes {result.votes_sent}")
        wanted = {vote for r in rounds for vote in r.vote_ids}
        until = time.time() + args.grace
        collected = await asyncio.gather(*(g.collect(wanted, until) for g in groups))
        arrivals = [got for got_per_client, _, _ in collected for got in got_per_client]
        for result in rounds:
            ids = set(result.vote_ids)
            result.votes_expected = len(ids) * len(arrivals)
            result.votes_received = sum(len(ids & got.keys()) for got in arrivals)
            result.vote_delays_s = [got[v] for got in arrivals for v in result.vote_ids
                                    if v in got]
    finally:
        for group in groups:
            await asyncio.to_thread(group.close)
        voter.close()


def run(args: argparse.Namespace) -> list[Round]:
    rounds = [Round(name) for name in ROUNDS]
    with tempfile.TemporaryDirectory(prefix="partysense-forged-flood-") as scratch, \
            statements.server(args.dsn) as admin_dsn, \
            database.bench_database(admin_dsn, args.tree) as dsn:
        workdir = args.keep_logs or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        [event], tracks = database.create_party(dsn, 1)
        role = create_forger(dsn)
        counts = statements.Statements(dsn)
        service = services.start_partysense(counts.daemon_dsn, workdir, twistd=args.twistd)
        try:
            asyncio.run(asyncio.wait_for(
                _sitting(rounds, service, dsn, event, tracks, role, args, postmaster_pid(dsn),
                         counts),
                timeout=len(ROUNDS) * (args.duration + args.grace + 30) + 300))
        except Exception:
            log(service.log_tail())
            raise
        finally:
            service.stop()
            counts.close()
            drop_forger(dsn, role)
    return rounds


# -- printing ----------------------------------------------------------------------------

HEADER = ("| round | daemon CPU s | % of a core | × idle | × votes "
          "| then draining: s / CPU s | change-log reads: /metrics / pg_stat_statements "
          "| daemon statements | bad notifications "
          "| forged sent (achieved /s) | vote delay p50 / p99 (ms) | votes received/expected "
          "| votes lost | PostgreSQL CPU s | flood CPU s | load avg |")


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _kind(r: Round, kind: str) -> str:
    return "n/a" if r.statements is None else f"{r.statements[kind]:,}"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}×" if base > 0 else "-"


def _delays(r: Round) -> str:
    if not r.vote_delays_s:
        return "-"
    return " / ".join(f"{quantile(r.vote_delays_s, q) * 1e3:.1f}" for q in (0.5, 0.99))


def row(r: Round, idle: Round, votes: Round) -> str:
    forged = (f"{r.forged.sent:,} ({r.forged.rate:,.0f})" if r.forged is not None else "-")
    return (f"| {r.name} | {r.daemon_cpu_s:.3f} | {r.core_percent:.2f} "
            f"| {_ratio(r.daemon_cpu_s, idle.daemon_cpu_s)} "
            f"| {_ratio(r.daemon_cpu_s, votes.daemon_cpu_s)} "
            f"| {r.drain_s:.1f} / {r.drain_cpu_s:.3f} "
            f"| {_count(r.reads)} / {_kind(r, 'change-log reads')} "
            f"| {_kind(r, 'all')} | {_count(r.bad)} "
            f"| {forged} | {_delays(r)} | {r.votes_received}/{r.votes_expected} "
            f"| {r.votes_expected - r.votes_received} | {r.postgres_cpu_s:.2f} "
            f"| {r.flood_cpu_s:.2f} | {r.load_average:.2f} |")


def verdicts(rounds: list[Round]) -> list[str]:
    """The issue's targets, each PASS or FAIL."""
    idle, votes, flood_only, both = rounds
    lines = []
    ratio = flood_only.daemon_cpu_s / idle.daemon_cpu_s if idle.daemon_cpu_s else math.inf
    lines.append(f"flood CPU / idle CPU: {flood_only.daemon_cpu_s:.3f} / "
                 f"{idle.daemon_cpu_s:.3f} s = {ratio:.1f}× (target <= 2×): "
                 f"{'PASS' if ratio <= 2 else 'FAIL'}")
    reads = [r.reads for r in (flood_only, both)]
    lines.append(f"change-log reads in the flood rounds (/metrics): "
                 f"{', '.join(map(_count, reads))} (target 0): "
                 + ("n/a" if None in reads else 'PASS' if not any(reads) else 'FAIL'))
    if flood_only.statements is not None and both.statements is not None:
        counted = [r.statements["change-log reads"] for r in (flood_only, both)]
        lines.append(f"change-log reads in the flood rounds (pg_stat_statements): "
                     f"{counted[0]}, {counted[1]} (target 0): "
                     f"{'PASS' if not any(counted) else 'FAIL'}")
    if votes.vote_delays_s and both.vote_delays_s:
        before, after = quantile(votes.vote_delays_s, 0.99), quantile(both.vote_delays_s, 0.99)
        p99 = after / before if before > 0 else math.inf
        lines.append(f"vote delay p99, votes + flood / votes: {after * 1e3:.1f} / "
                     f"{before * 1e3:.1f} ms = {p99:.2f}× (target <= 1.5×): "
                     f"{'PASS' if p99 <= 1.5 else 'FAIL'}")
    lost = sum(r.votes_expected - r.votes_received for r in rounds)
    lines.append(f"votes lost: {lost} (target 0): {'PASS' if not lost else 'FAIL'}")
    return lines


OPTIONS = (  # name, type, default, help
    ("--duration", float, 10.0, "seconds per round"),
    ("--rate", float, 20_000.0, "forged notifications per second in the flood rounds"),
    ("--votes", float, 200.0, "real votes per second in the votes rounds"),
    ("--clients", int, 20, "seed clients on the event (and one more on the firehose)"),
    ("--batch", int, 250, "forged notifications per statement"),
    ("--grace", float, 15.0, "seconds to wait for the daemon to drain a flood, and for the "
                             "last votes"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.forged_flood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="an admin DSN (may CREATE DATABASE and CREATE ROLE); "
                                      "default: embedded")
    for name, kind, default, text in OPTIONS:
        parser.add_argument(name, type=kind, default=default, help=text)
    services.add_tree_options(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600 or args.rate <= 0 or args.votes <= 0:
        parser.error("--duration 1..600, --rate > 0, --votes > 0")
    if not 1 <= args.clients <= 1000 or not 2 <= args.batch <= 5000:
        parser.error("--clients 1..1000, --batch 2..5000")
    services.resolve_tree(parser, args)
    return args


def main(argv: list[str] | None = None) -> list[Round]:
    args = parse_args(argv)
    tree = args.tree or Path(__file__).resolve().parent.parent
    log(f"{tree}: load average {os.getloadavg()[0]:.2f} at the start")
    rounds = run(args)
    idle, votes = rounds[0], rounds[1]
    print(f"{tree}: {args.duration:g} s per round on one daemon, {args.clients} seed clients "
          f"on one event + 1 on the firehose, {args.votes:g} votes/s, {args.rate:g} forged "
          f"NOTIFYs/s ({args.batch} a statement) on event_N and firehose; "
          f"{os.cpu_count()} cores\n")
    print_table(HEADER, [row(result, idle, votes) for result in rounds])
    print()
    for line in verdicts(rounds):
        print(line)
    sys.stdout.flush()
    if args.json:
        figures = []
        for result in rounds:
            figure = asdict(result)
            figure["core_percent"] = result.core_percent
            figure["forged_rate"] = result.forged.rate if result.forged else 0.0
            figures.append(figure)
        args.json.write_text(json.dumps(figures, indent=1))
    return rounds


if __name__ == "__main__":
    main()
