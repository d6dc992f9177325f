"""Does a flood of clients' queries delay the votes of other clients?

    python -m bench.query_load                        # 0, 1, 10 and 50 abusers, 10 s each
    python -m bench.query_load --abusers 0,10 --duration 5 --json out.json
    python -m bench.query_load --abuse                # the issue's attack, with and without

``--abuse`` is the issue's benchmark: 50 innocent seed clients watch 200 votes/s
while 50 abusers do the snapshot loop, side by side with the same run without
abusers (``--innocent 50 --rate 200 --abusers 0,50``; an option given explicitly
wins over the preset). After the table it prints the innocent snapshot latency
p50 and p99 and the vote delay p99 with abusers over without, and PASS or FAIL
against the targets: snapshots within 2x, vote delay p99 within 20 %.

``--floods ping,fragments`` (on with ``--abuse``) adds a round per kind of frame
flood (issue 15, bench/floods.py): ``--flooders`` connections (1) with no token
and no subscribe send 16-byte pings, or a FIN=0 text frame and then empty
continuation frames, as fast as their sockets take them, connecting again at
once whenever the daemon closes them. Target: the innocent vote delay p50 and
p99 within 1.5x of the round without abusers.

Measures the daemon of the tree it is run from (or of ``--tree``: another
checkout's ``.venv/bin/twistd``, for a before/after), started as operators
start it (``twistd -n partysense-live --port ... --dsn ...``, bench/services.py),
on a fresh database (bench/database.py) holding:

- event A with 50,000 votes (inserted with the triggers off: no change log),
- event B, where a voter commits votes at ``--rate`` (50/s) during the measured window,
- small events C1..Cn (20 votes each; n = ten, or one per second of
  ``--duration`` if more), one per innocent snapshot.

Each round (one per abuser count N) starts a fresh daemon, then runs, for
``--duration`` seconds:

- ``--innocent`` seed clients (default 1; no subprotocol, ``{"event": B}``),
  in a child process of their own: each vote's delay, at each of them, is its
  arrival minus the payload's ``ts`` (the commit time by the database's clock;
  same machine, 1 ms resolution); the percentiles pool every client's copy;
- an innocent ``partysense.v2`` client that subscribes once a second to the
  next Ci (a new event each time, so no answer is superseded): snapshot
  latency is send -> snapshot received;
- N abusive ``partysense.v2`` clients (in a child process, so that their work
  does not delay the innocent clients' clocks), each sending
  ``{"type": "subscribe", "event": A}`` 19 times a second (the daemon allows
  20): every one is a REPEATABLE READ snapshot over A's 50,000 votes. The
  daemon handles a client's messages one at a time, so an abuser has at most
  one snapshot in the database at once and the rest wait in the daemon:
  "snapshots/s" is what the abusers received in the window (the query
  connection's throughput), "subscribes/s" what they sent. They count every
  answer of the round (snapshots, ``too_many_subscribes`` errors, other errors)
  and the close codes of the connections the daemon closed (with the first
  close's time after the window's start); a closed abuser stops.

After the window the abusers leave and the votes and snapshots still due are
awaited for ``--grace`` seconds; whatever is still missing then enters the
percentiles as a lower bound (the cell is prefixed with >=). The daemon's CPU
seconds (psutil, its process) and PostgreSQL's (every server process) are
taken over the window, and so are the load generator's own ("clients CPU s":
this process with the voter and the snapshot client / the seed clients' process
/ the abusers' process): on a small machine the clients compete with the daemon.
Everything is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import psycopg2
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from bench import database, services
from bench.floods import Flooders, FloodStats
from harness.frameflood import FLOODS

V2 = Subprotocol("partysense.v2")
BIG_VOTES = 50_000
SMALL_EVENTS = 10
SMALL_VOTES = 20


# -- the database -----------------------------------------------------------

@dataclass(frozen=True)
class Party:
    big: int            # A: the event the abusers snapshot
    voted: int          # B: the event the voter votes on
    small: list[int]    # C1..Cn: one per innocent snapshot
    tracks: list[int]


def prepare(dsn: str, big_votes: int, small_events: int = SMALL_EVENTS) -> Party:
    """The events, and the votes in A and the Ci, inserted with our triggers off."""
    events, tracks = database.create_party(dsn, 2 + small_events)
    party = Party(big=events[0], voted=events[1], small=events[2:], tracks=tracks)
    connection = psycopg2.connect(dsn)
    connection.autocommit = True  # the ALTERs: no deferred foreign-key checks pending
    try:
        with connection.cursor() as cursor:
            # USER: ours (partysense_vote_*), not the foreign keys' own triggers.
            cursor.execute("ALTER TABLE event_vote DISABLE TRIGGER USER")
            try:
                insert = ("INSERT INTO event_vote (is_positive, event_id, track_id, user_id) "
                          "SELECT random() < 0.7, %(event)s, "
                          "(%(tracks)s::int[])[1 + g %% cardinality(%(tracks)s::int[])], g "
                          "FROM generate_series(1, %(count)s) g")
                cursor.execute(insert, {"event": party.big, "tracks": tracks,
                                        "count": big_votes})
                for event in party.small:
                    cursor.execute(insert, {"event": event, "tracks": tracks,
                                            "count": SMALL_VOTES})
            finally:
                cursor.execute("ALTER TABLE event_vote ENABLE TRIGGER USER")
            cursor.execute("ANALYZE event_vote")
    finally:
        connection.close()
    return party


class Voter:
    """Commits votes on one event (autocommit: one INSERT, one transaction)."""

    INSERT = ("INSERT INTO event_vote (is_positive, event_id, track_id, user_id) "
              "VALUES (%s, %s, %s, 1) RETURNING id")

    def __init__(self, dsn: str, event: int, tracks: list[int]) -> None:
        self.connection = psycopg2.connect(dsn)
        self.connection.autocommit = True
        self.event = event
        self.tracks = tracks
        self.rng = random.Random(7)
        self.sent: list[int] = []
        self.errors = 0
        self.late_max_s = 0.0

    def vote(self) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute(self.INSERT, (self.rng.random() < 0.7, self.event,
                                         self.rng.choice(self.tracks)))
            return int(cursor.fetchone()[0])

    def run(self, start: float, duration: float, rate: float) -> None:
        """Vote i at start + i / rate (epoch seconds), for ``duration`` seconds."""
        for n in range(int(duration * rate)):
            due = start + n / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            else:
                self.late_max_s = max(self.late_max_s, -delay)
            if time.time() > start + duration + 1.0:
                return  # commits so slow the schedule is lost: stop, do not pile up
            try:
                self.sent.append(self.vote())
            except psycopg2.Error:
                self.errors += 1

    def close(self) -> None:
        self.connection.close()


class CpuSeconds:
    """user + system CPU seconds of a process and its children since creation (per pid:
    a child that starts later counts from zero); of the process alone if not recursive."""

    def __init__(self, pid: int, recursive: bool = True) -> None:
        self.pid = pid
        self.recursive = recursive
        self._start = self._now()

    def _now(self) -> dict[int, float]:
        try:
            root = psutil.Process(self.pid)
            processes = [root, *root.children(recursive=True)] if self.recursive else [root]
        except psutil.NoSuchProcess:
            return {}
        used = {}
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            used[process.pid] = times.user + times.system
        return used

    def seconds(self) -> float:
        return sum(used - self._start.get(pid, 0.0) for pid, used in self._now().items())


def postmaster_pid(dsn: str) -> int:
    connection = psycopg2.connect(dsn)
    try:
        return psutil.Process(connection.get_backend_pid()).ppid()
    except psutil.NoSuchProcess:  # a PostgreSQL on another machine
        return 0
    finally:
        connection.close()


def end_process(process: Any) -> None:
    """Wait a little for a child process to finish, then kill it."""
    if process is not None:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)


# -- the abusers (a child process) -------------------------------------------

@dataclass
class AbuseStats:
    connected: int = 0
    connect_failures: int = 0
    subscribes_in_window: int = 0
    snapshots_in_window: int = 0
    snapshots: int = 0
    latencies_s: list[float] = field(default_factory=list)  # answered ones, in the window
    errors: dict[str, int] = field(default_factory=dict)
    other_messages: int = 0       # neither a snapshot nor an error
    closes: dict[str, int] = field(default_factory=dict)  # close code -> connections
    first_close_s: float | None = None  # after the window's start


async def _abuser(client: ClientConnection, event: int, rate: float, window: tuple[float, float],
                  until: float, stop: Any, stats: AbuseStats) -> None:
    asked: dict[int, float] = {}

    async def read() -> None:
        async for text in client:
            now = time.time()
            message = json.loads(text)
            kind = message.get("type")
            if kind == "snapshot":
                stats.snapshots += 1
                sent = asked.pop(message.get("id"), None)
                if window[0] <= now <= window[1]:
                    stats.snapshots_in_window += 1
                    if sent is not None:
                        stats.latencies_s.append(now - sent)
            elif kind == "error":
                asked.pop(message.get("id"), None)
                name = str(message.get("error"))
                stats.errors[name] = stats.errors.get(name, 0) + 1
            else:
                stats.other_messages += 1

    reader = asyncio.create_task(read())
    period = 1.0 / rate
    due = window[0] + random.random() * period
    number = 0
    try:
        while not stop.is_set() and not reader.done():
            now = time.time()
            if now >= until or now >= window[1]:
                break
            if due > now:
                await asyncio.sleep(due - now)
                continue
            number += 1
            asked[number] = time.time()
            await client.send(json.dumps({"type": "subscribe", "event": event, "id": number}))
            stats.subscribes_in_window += 1
            # Never catch up in a burst: a late loop sends later, not more.
            due = max(due + period, time.time())
    except ConnectionClosed:
        pass
    finally:
        # We close only after this returns: a close frame now is the daemon's (a 4029,
        # say: the reader then ends with ConnectionClosedError), or the connection was
        # lost (1006). close_code stays None while the closing handshake is under way.
        received = client.protocol.close_rcvd
        code = received.code if received is not None else client.close_code
        if code is not None:
            stats.closes[str(code)] = stats.closes.get(str(code), 0) + 1
            after = time.time() - window[0]
            if stats.first_close_s is None or after < stats.first_close_s:
                stats.first_close_s = after
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _abusers(port: int, count: int, event: int, rate: float, pipe: Connection,
                   stop: Any) -> AbuseStats:
    stats = AbuseStats()
    url = f"ws://127.0.0.1:{port}/"
    results = await asyncio.gather(
        *(connect(url, subprotocols=[V2], compression=None, ping_interval=None,
                  open_timeout=15, close_timeout=2, max_size=2**22) for _ in range(count)),
        return_exceptions=True)
    clients = [c for c in results if isinstance(c, ClientConnection)]
    stats.connected = len(clients)
    stats.connect_failures = count - len(clients)
    pipe.send(("ready", stats.connected))
    if not await asyncio.to_thread(pipe.poll, 60):
        return stats
    _, start, end, until = pipe.recv()
    await asyncio.wait_for(
        asyncio.gather(*(_abuser(c, event, rate, (start, end), until, stop, stats)
                         for c in clients), return_exceptions=True),
        timeout=max(5.0, until - time.time() + 5))
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return stats


def abusers_main(port: int, count: int, event: int, rate: float, pipe: Connection,
                 stop: Any) -> None:
    """The child process: connect, wait for "go", abuse, report."""
    try:
        stats = asyncio.run(_abusers(port, count, event, rate, pipe, stop))
        pipe.send(("done", asdict(stats)))
    except Exception as error:  # reported, not swallowed: the parent prints it
        pipe.send(("failed", repr(error)))
    finally:
        pipe.close()


class Abusers:
    """N abusive clients in a child process; nothing at all for N = 0."""

    def __init__(self, port: int, count: int, event: int, rate: float) -> None:
        self.count = count
        self.process: Any = None
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        if count:
            self.pipe, child = context.Pipe()
            self.process = context.Process(
                target=abusers_main, args=(port, count, event, rate, child, self.stop),
                daemon=True)
            self.process.start()
            child.close()

    def _recv(self, timeout: float) -> Any:
        if not self.pipe.poll(timeout):
            raise RuntimeError(f"abusers: no answer within {timeout:g} s")
        message = self.pipe.recv()
        if message[0] == "failed":
            raise RuntimeError(f"abusers failed: {message[1]}")
        return message

    def ready(self) -> int:
        return self._recv(60)[1] if self.count else 0

    def go(self, start: float, end: float, until: float) -> None:
        if self.count:
            self.pipe.send(("go", start, end, until))

    def finish(self) -> AbuseStats:
        self.stop.set()
        if not self.count:
            return AbuseStats()
        try:
            return AbuseStats(**self._recv(30)[1])
        finally:
            self.close()

    def close(self) -> None:
        end_process(self.process)
        self.process = None


# -- the innocent clients -----------------------------------------------------

class SeedWatcher:
    """A seed client on event B: arrival minus commit time, per vote."""

    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}  # vote id -> delay (s)
        self.frames = 0
        self.client: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, port: int, event: int) -> None:
        self.client = await connect(f"ws://127.0.0.1:{port}/", compression=None,
                                    ping_interval=None, open_timeout=15, close_timeout=2)
        await self.client.send(json.dumps({"event": event}))
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.client is not None
        try:
            async for text in self.client:
                now = time.time()
                change = json.loads(text)
                self.frames += 1
                if change.get("ts") is not None:
                    self.arrivals[change["vote"]] = now - float(change["ts"])
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


# The seed clients live in a child process: N of them at R votes/s are N * R
# frames a second to read, which would otherwise delay the snapshot client's
# clock and the voter (a thread) in this process.

def _wait_message(pipe: Connection, stop: Any, timeout: float) -> Any:
    """The parent's next message; None after ``timeout`` s or once told to stop."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if pipe.poll(min(0.5, left)):
            return pipe.recv()
    return None


async def _seeds(port: int, count: int, event: int, pipe: Connection, stop: Any,
                 patience: float, lifetime: float) -> None:
    watchers = [SeedWatcher() for _ in range(count)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(w.start(port, event) for w in watchers), return_exceptions=True),
            timeout=patience)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise RuntimeError(f"{len(failed)} of {count} seed clients could not subscribe: "
                               f"{failed[0]!r}")
        # Live once every one has had a vote (the parent votes meanwhile).
        deadline = time.monotonic() + patience
        while not all(w.frames for w in watchers):
            if stop.is_set() or time.monotonic() > deadline:
                silent = sum(1 for w in watchers if not w.frames)
                raise RuntimeError(f"{silent} of {count} seed clients had no vote "
                                   f"within {patience:g} s")
            await asyncio.sleep(0.02)
        pipe.send(("live", count))
        message = await asyncio.to_thread(_wait_message, pipe, stop, lifetime)
        if message is None:
            raise RuntimeError("seed clients: the parent never asked for the votes")
        _, wanted_ids, until = message
        wanted = set(wanted_ids)
        while time.time() < until and not stop.is_set() and not all(
                wanted <= w.arrivals.keys() for w in watchers):
            await asyncio.sleep(0.05)
        over = time.time()
        closes: dict[str, int] = {}
        for w in watchers:
            if w.client is not None and w.client.close_code is not None:
                code = str(w.client.close_code)
                closes[code] = closes.get(code, 0) + 1
        pipe.send(("done", [w.arrivals for w in watchers], over, closes))
    finally:
        await asyncio.gather(*(w.close() for w in watchers), return_exceptions=True)


def seeds_main(port: int, count: int, event: int, pipe: Connection, stop: Any,
               patience: float, lifetime: float) -> None:
    """The child process: connect and subscribe, say when live, report the arrivals."""
    try:
        asyncio.run(asyncio.wait_for(
            _seeds(port, count, event, pipe, stop, patience, lifetime),
            timeout=2 * patience + lifetime + 30))
    except Exception as error:  # reported, not swallowed: the parent prints it
        pipe.send(("failed", repr(error)))
    finally:
        pipe.close()


class InnocentSeeds:
    """N seed clients on event B, in a child process."""

    def __init__(self, port: int, count: int, event: int, lifetime: float,
                 patience: float = 45.0) -> None:
        self.count = count
        self.patience = patience
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.pipe, child = context.Pipe()
        self.process: Any = context.Process(
            target=seeds_main, args=(port, count, event, child, self.stop, patience, lifetime),
            daemon=True)
        self.process.start()
        child.close()
        self.pid: int = self.process.pid

    def _recv(self, timeout: float) -> Any:
        if not self.pipe.poll(timeout):
            raise RuntimeError(f"seed clients: no answer within {timeout:g} s")
        message = self.pipe.recv()
        if message[0] == "failed":
            raise RuntimeError(f"seed clients failed: {message[1]}")
        return message

    async def warm_up(self, voter: Voter) -> int:
        """Votes on B, one a second, until every seed client has one: all are live."""
        timeout = 2 * self.patience + 15  # the child's start, its connects, its patience
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.to_thread(voter.vote)
            wait = max(0.0, min(1.0, deadline - time.monotonic()))
            if await asyncio.to_thread(self.pipe.poll, wait):
                return int(self._recv(0)[1])
        raise RuntimeError(f"the seed clients were not live within {timeout:g} s")

    async def collect(self, wanted: set[int], until: float
                      ) -> tuple[list[dict[int, float]], float, dict[str, int]]:
        """Each client's arrivals (vote id -> delay) once all ``wanted`` votes have
        arrived everywhere or at ``until`` (epoch s); when it gave up; close codes."""
        self.pipe.send(("collect", sorted(wanted), until))
        _, arrivals, over, closes = await asyncio.to_thread(
            self._recv, max(0.0, until - time.time()) + 30)
        return arrivals, over, closes

    def close(self) -> None:
        self.stop.set()
        end_process(self.process)
        self.process = None


class SnapshotProbe:
    """A v2 client subscribing once a second to the next small event."""

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.latencies: dict[int, float] = {}
        self.errors: list[str] = []
        self.client: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, port: int) -> None:
        self.client = await connect(f"ws://127.0.0.1:{port}/", subprotocols=[V2],
                                    compression=None, ping_interval=None, open_timeout=15,
                                    close_timeout=2, max_size=2**22)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.client is not None
        try:
            async for text in self.client:
                now = time.perf_counter()
                message = json.loads(text)
                number = message.get("id")
                if message.get("type") == "snapshot" and number in self.sent:
                    self.latencies[number] = now - self.sent[number]
                elif message.get("type") == "error":
                    self.errors.append(str(message.get("error")))
        except ConnectionClosed:
            pass

    async def run(self, events: list[int], start: float, duration: float) -> None:
        assert self.client is not None
        for number in range(min(len(events), int(duration))):
            delay = start + 0.5 + number - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.sent[number] = time.perf_counter()
            await self.client.send(json.dumps(
                {"type": "subscribe", "event": events[number], "id": number}))

    def outstanding(self) -> int:
        return len(self.sent) - len(self.latencies)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


# -- one round ------------------------------------------------------------------

@dataclass
class Round:
    abusers: int
    innocent: int = 1                   # seed clients asked for
    flood: str | None = None            # a frame flood's kind instead of the snapshot loop
    flooders: int = 0
    flood_connections: int = 0          # every reconnect counts
    flood_mb_sent: float = 0.0
    flood_longest_s: float = 0.0        # the longest one flooding connection lasted
    abusers_connected: int = 0
    innocent_connected: int = 0
    votes_sent: int = 0
    votes_expected: int = 0             # votes_sent x innocent_connected
    votes_received: int = 0             # copies received, over every seed client
    seed_closes: dict[str, int] = field(default_factory=dict)
    vote_errors: int = 0
    voter_late_max_s: float = 0.0
    vote_delays_s: list[float] = field(default_factory=list)  # missing ones: lower bounds
    snapshots_asked: int = 0
    snapshots_answered: int = 0
    snapshot_latencies_s: list[float] = field(default_factory=list)  # idem
    snapshot_errors: list[str] = field(default_factory=list)
    abuser_subscribes_per_s: float = 0.0
    abuser_snapshots_per_s: float = 0.0
    abuser_snapshot_p50_s: float = math.nan
    abuser_snapshots: int = 0           # every answer of the round, in and after the window
    abuser_errors: dict[str, int] = field(default_factory=dict)
    abuser_other_messages: int = 0
    abuser_closes: dict[str, int] = field(default_factory=dict)
    abuser_first_close_s: float | None = None
    daemon_cpu_s: float = 0.0
    postgres_cpu_s: float = 0.0
    bench_cpu_s: float = 0.0            # this process: the voter, the snapshot client
    seeds_cpu_s: float = 0.0            # the seed clients' process
    abusers_cpu_s: float = 0.0          # the abusers' process
    connections_lost: int = 0
    load_average: float = 0.0
    error: str | None = None


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


async def _round(result: Round, service: services.Running, dsn: str, party: Party,
                 args: argparse.Namespace, pg_pid: int) -> None:
    probe = SnapshotProbe()
    voter = Voter(dsn, party.voted, party.tracks)
    seeds = InnocentSeeds(service.port, result.innocent, party.voted,
                          lifetime=args.duration + args.grace + 60)
    abusers: Abusers | Flooders = (
        Flooders(service.port, result.flood, result.flooders) if result.flood
        else Abusers(service.port, result.abusers, party.big, args.abuse_rate))
    try:
        await probe.start(service.port)
        result.innocent_connected = await seeds.warm_up(voter)
        result.abusers_connected = await asyncio.to_thread(abusers.ready)
        start = time.time() + 0.5
        end = start + args.duration
        abusers.go(start, end, end + 1.0)
        await asyncio.sleep(max(0.0, start - time.time()))
        daemon_cpu, postgres_cpu = CpuSeconds(service.pid), CpuSeconds(pg_pid)
        bench_cpu, seeds_cpu = CpuSeconds(os.getpid(), recursive=False), CpuSeconds(seeds.pid)
        abusers_cpu = CpuSeconds(abusers.process.pid) if abusers.process is not None else None
        voting = asyncio.to_thread(voter.run, start, args.duration, args.rate)
        await asyncio.gather(voting, probe.run(party.small, start, args.duration))
        await asyncio.sleep(max(0.0, end - time.time()))
        result.daemon_cpu_s = daemon_cpu.seconds()
        result.postgres_cpu_s = postgres_cpu.seconds() if pg_pid else math.nan
        result.bench_cpu_s = bench_cpu.seconds()
        result.seeds_cpu_s = seeds_cpu.seconds()
        result.abusers_cpu_s = abusers_cpu.seconds() if abusers_cpu is not None else 0.0
        result.load_average = os.getloadavg()[0]
        stats = await asyncio.to_thread(abusers.finish)
        if isinstance(stats, FloodStats):
            _flood_figures(result, stats)
            stats = AbuseStats()
        # The stragglers: votes and snapshots still on their way.
        wanted = set(voter.sent)
        deadline = time.time() + args.grace

        async def snapshots_due() -> None:
            while time.time() < deadline and probe.outstanding():
                await asyncio.sleep(0.05)

        (arrivals, over, result.seed_closes), _ = await asyncio.gather(
            seeds.collect(wanted, deadline), snapshots_due())
        missing = set().union(*(wanted - got.keys() for got in arrivals))
        commit_times = await asyncio.to_thread(_commit_times, voter, missing)
        result.votes_sent = len(voter.sent)
        result.votes_expected = len(voter.sent) * len(arrivals)
        result.votes_received = sum(len(wanted & got.keys()) for got in arrivals)
        result.vote_errors = voter.errors
        result.voter_late_max_s = voter.late_max_s
        result.vote_delays_s = [got[v] if v in got else over - commit_times[v]
                                for got in arrivals for v in voter.sent
                                if v in got or v in commit_times]
        now = time.perf_counter()
        result.snapshots_asked = len(probe.sent)
        result.snapshots_answered = len(probe.latencies)
        result.snapshot_latencies_s = [probe.latencies.get(n, now - sent)
                                       for n, sent in probe.sent.items()]
        result.snapshot_errors = probe.errors
        if not result.flood:
            result.abusers_connected = stats.connected or result.abusers_connected
        result.abuser_subscribes_per_s = stats.subscribes_in_window / args.duration
        result.abuser_snapshots_per_s = stats.snapshots_in_window / args.duration
        result.abuser_snapshot_p50_s = quantile(stats.latencies_s, 0.5)
        result.abuser_snapshots = stats.snapshots
        result.abuser_errors = stats.errors
        result.abuser_other_messages = stats.other_messages
        if not result.flood:
            result.abuser_closes = stats.closes
            result.abuser_first_close_s = stats.first_close_s
    finally:
        abusers.stop.set()
        seeds.stop.set()
        await asyncio.to_thread(abusers.close)
        await asyncio.to_thread(seeds.close)
        await probe.close()
        voter.close()


def _flood_figures(result: Round, stats: FloodStats) -> None:
    result.flood_connections = stats.connections
    result.flood_mb_sent = stats.bytes_sent / 1e6
    result.flood_longest_s = stats.longest_s
    result.abuser_closes = stats.closes
    result.abuser_first_close_s = stats.first_close_s


def _commit_times(voter: Voter, missing: set[int]) -> dict[int, float]:
    """The commit times (epoch s) of the votes that never arrived somewhere."""
    if not missing:
        return {}
    with voter.connection.cursor() as cursor:
        cursor.execute("SELECT vote_id, extract(epoch FROM committed_at)::float8 "
                       "FROM partysense_change "
                       "WHERE vote_id = ANY(%s) AND op = 'insert'", (sorted(missing),))
        return {int(vote): float(ts) for vote, ts in cursor.fetchall()}


def run_round(result: Round, dsn: str, party: Party, args: argparse.Namespace,
              workdir: Path, pg_pid: int) -> Round:
    service = services.start_partysense(dsn, workdir, twistd=args.twistd)
    try:
        asyncio.run(asyncio.wait_for(_round(result, service, dsn, party, args, pg_pid),
                                     timeout=args.duration + args.grace + 120))
    except Exception as error:  # a failed round is a result, not the end
        result.error = f"{type(error).__name__}: {error}"
        log(f"  {label(result)}: FAILED: {result.error}\n{service.log_tail()}")
    finally:
        exited = None if service.alive() else service.process.returncode
        service.stop()
        if exited is not None:
            result.error = (result.error or "") + f" (the daemon exited with {exited})"
    try:
        text = service.log_path.read_text("utf-8", "replace")
        result.connections_lost = text.count("Lost the ")
    except FileNotFoundError:
        pass
    return result


# -- printing -------------------------------------------------------------------

def _ms(values: list[float], q: float, censored: bool) -> str:
    value = quantile(values, q) if q < 1 else (max(values) if values else math.nan)
    if math.isnan(value):
        return "-"
    return f"{'>=' if censored else ''}{value * 1e3:.1f}"


HEADER = ("| abusers | vote delay p50 / p99 / max (ms) | votes received/sent "
          "| innocent snapshot p50 / p99 (ms) | answered/asked "
          "| abuser snapshots/s (subscribes/s) "
          "| abusers got: snapshots / too_many_subscribes / other errors "
          "| abusers closed by the daemon | daemon CPU s | PostgreSQL CPU s "
          "| clients CPU s: bench / seeds / abusers | connections lost | load avg |")
COLUMNS = HEADER.count("|") - 1


def _abuser_answers(r: Round) -> str:
    limited = r.abuser_errors.get("too_many_subscribes", 0)
    others = {name: n for name, n in r.abuser_errors.items() if name != "too_many_subscribes"}
    text = f"{r.abuser_snapshots} / {limited} / {sum(others.values())}"
    if others:
        text += " (" + ", ".join(f"{name}: {n}" for name, n in sorted(others.items())) + ")"
    if r.abuser_other_messages:
        text += f", {r.abuser_other_messages} other messages"
    return text


def _abuser_closes(r: Round) -> str:
    if not r.abuser_closes:
        return "none"
    text = ", ".join(f"{code}: {n}" for code, n in sorted(r.abuser_closes.items()))
    if r.abuser_first_close_s is not None:
        text += f" (first {r.abuser_first_close_s:.1f} s in)"
    return text


def label(r: Round) -> str:
    """The first column: how many abusers, or which flood."""
    return f"{r.flooders} {r.flood} flood" if r.flood else str(r.abusers)


def row(r: Round) -> str:
    if r.error and not r.votes_sent:
        return f"| {label(r)} | failed: {r.error} |" + " |" * (COLUMNS - 2)
    votes_censored = r.votes_received < r.votes_expected
    snaps_censored = r.snapshots_answered < r.snapshots_asked
    delay = " / ".join(_ms(r.vote_delays_s, q, votes_censored) for q in (0.5, 0.99, 1.0))
    snap = " / ".join(_ms(r.snapshot_latencies_s, q, snaps_censored) for q in (0.5, 0.99))
    votes = f"{r.votes_received}/{r.votes_expected}"
    if r.innocent_connected != 1:
        votes += f" ({r.votes_sent} x {r.innocent_connected})"
    if r.flood:
        abuse = (f"{r.flood_connections} connections, {r.flood_mb_sent:.1f} MB sent, "
                 f"the longest {r.flood_longest_s:.2f} s")
        answers, closes = "-", _abuser_closes(r)
    elif not r.abusers:
        abuse = answers = closes = "-"
    else:
        abuse = f"{r.abuser_snapshots_per_s:.1f} ({r.abuser_subscribes_per_s:.0f})"
        answers, closes = _abuser_answers(r), _abuser_closes(r)
    clients = f"{r.bench_cpu_s:.2f} / {r.seeds_cpu_s:.2f} / {r.abusers_cpu_s:.2f}"
    return (f"| {label(r)} | {delay} | {votes} | {snap} "
            f"| {r.snapshots_answered}/{r.snapshots_asked} | {abuse} | {answers} | {closes} "
            f"| {r.daemon_cpu_s:.2f} | {r.postgres_cpu_s:.2f} | {clients} "
            f"| {r.connections_lost} | {r.load_average:.2f} |")


# -- with abusers / without (--abuse) ---------------------------------------------

# (what, which latencies, quantile, most allowed ratio with abusers / without)
TARGETS = (("innocent snapshot p50", "snapshot", 0.5, 2.0),
           ("innocent snapshot p99", "snapshot", 0.99, 2.0),
           ("vote delay p99", "vote", 0.99, 1.2))
# A frame flood (issue 15): the innocent clients' votes within 1.5x.
FLOOD_TARGETS = (("vote delay p50", "vote", 0.5, 1.5),
                 ("vote delay p99", "vote", 0.99, 1.5))


def _figures(r: Round, kind: str) -> tuple[list[float], bool]:
    """The latencies and whether some are lower bounds (never arrived)."""
    if kind == "snapshot":
        return r.snapshot_latencies_s, r.snapshots_answered < r.snapshots_asked
    return r.vote_delays_s, r.votes_received < r.votes_expected


def compare(rounds: list[Round]) -> bool:
    """Prints each round with abusers against the round without; True if all pass."""
    print("\nWith abusers / without (targets: innocent snapshot p50 and p99 within 2x, "
          "vote delay p99 within 1.2x; with a frame flood: vote delay p50 and p99 within 1.5x):")
    base = next((r for r in rounds if r.abusers == 0 and not r.flood), None)
    attacked = [r for r in rounds if r.abusers > 0 or r.flood]
    if base is None or not attacked:
        print("  FAIL: needs a round without abusers and one with")
        return False
    passed = True
    for r in attacked:
        for what, kind, q, limit in FLOOD_TARGETS if r.flood else TARGETS:
            (without, base_censored), (within, censored) = _figures(base, kind), _figures(r, kind)
            side = f"  {label(r) if r.flood else f'{r.abusers} abusers'}: {what:<22}"
            if (base.error or r.error) or not without or not within:
                print(f"{side} n/a  FAIL (a round failed: {base.error or r.error or 'no data'})")
                passed = False
                continue
            before, after = quantile(without, q), quantile(within, q)
            ratio = after / before if before > 0 else math.inf
            bound = ">=" if censored and not base_censored else (
                "<=" if base_censored and not censored else ("?" if censored else ""))
            text = (f"{side} {before * 1e3:7.2f} ms -> {after * 1e3:7.2f} ms "
                    f"= {bound}{ratio:.2f}x (target <= {limit:g}x)")
            if censored:
                verdict = "FAIL (some never arrived within --grace)"
            elif base_censored:
                verdict = "FAIL (inconclusive: the run without abusers lost some)"
            else:
                verdict = "PASS" if ratio <= limit else (
                    f"FAIL ({(ratio / limit - 1) * 100:.0f} % over the target)")
            passed = passed and verdict == "PASS"
            print(f"{text}: {verdict}")
        if r.flood:
            # Not a target, but what the flood costs the daemon itself, whatever
            # else the machine is doing to the clients' clocks.
            ratio = r.daemon_cpu_s / max(base.daemon_cpu_s, 1e-9)
            print(f"  {label(r)}: daemon CPU s             {base.daemon_cpu_s:7.2f}    -> "
                  f"{r.daemon_cpu_s:7.2f}    = {ratio:.2f}x (not a target)")
    print(f"Overall: {'PASS' if passed else 'FAIL'}")
    return passed


def print_table(header: str, rows: list[str]) -> None:
    """A markdown table: the header, its rule, the rows."""
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for line in rows:
        print(line)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


PRESETS = {  # option -> (default, with --abuse)
    "abusers": ("0,1,10,50", "0,50"),
    "floods": ("", "ping,fragments"),
    "innocent": (1, 50),
    "rate": (50.0, 200.0),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.query_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="an admin DSN (may CREATE DATABASE); default: embedded")
    parser.add_argument("--abuse", action="store_true",
                        help="the issue's benchmark: --innocent 50 --rate 200 --abusers 0,50, "
                             "then the ratios with / without abusers, PASS or FAIL "
                             "(options given explicitly win)")
    parser.add_argument("--abusers", help="comma-separated abuser counts, one round each "
                                          "(default 0,1,10,50; --abuse: 0,50)")
    parser.add_argument("--innocent", type=int,
                        help="innocent seed clients watching B (default 1; --abuse: 50)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--rate", type=float,
                        help="votes per second on B (default 50; --abuse: 200)")
    parser.add_argument("--floods",
                        help="comma-separated frame floods, one round each: ping, fragments "
                             "(default none; --abuse: ping,fragments)")
    parser.add_argument("--flooders", type=int, default=1,
                        help="flooding connections in a flood round (each reconnects when "
                             "closed)")
    parser.add_argument("--abuse-rate", type=float, default=19.0,
                        help="subscribes per second per abuser (the daemon allows 20)")
    parser.add_argument("--big-votes", type=int, default=BIG_VOTES,
                        help="votes in the abusers' event")
    parser.add_argument("--grace", type=float, default=15.0,
                        help="seconds to wait for late votes and snapshots after a round")
    services.add_tree_options(parser)
    args = parser.parse_args(argv)
    for name, (default, preset) in PRESETS.items():
        if getattr(args, name) is None:
            setattr(args, name, preset if args.abuse else default)
    args.counts = [int(n) for n in args.abusers.split(",") if n.strip()]
    args.flood_kinds = [kind.strip() for kind in args.floods.split(",") if kind.strip()]
    if not set(args.flood_kinds) <= set(FLOODS) or not 1 <= args.flooders <= 100:
        parser.error(f"--floods: some of {', '.join(FLOODS)}; --flooders 1..100")
    services.resolve_tree(parser, args)
    if not 1 <= args.duration <= 600 or args.rate <= 0 or not 0 < args.abuse_rate <= 20:
        parser.error("--duration 1..600, --rate > 0, --abuse-rate in (0, 20]")
    if not 1 <= args.innocent <= 1000:
        parser.error("--innocent 1..1000")
    return args


def main(argv: list[str] | None = None) -> list[Round]:
    args = parse_args(argv)
    tree = args.tree or Path(__file__).resolve().parent.parent
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="partysense-query-load-") as scratch, \
            database.server(args.dsn) as admin_dsn, \
            database.bench_database(admin_dsn, args.tree) as dsn:
        workdir = args.keep_logs or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        party = prepare(dsn, args.big_votes, max(SMALL_EVENTS, int(args.duration)))
        log(f"{tree}: event {party.big} has {args.big_votes} votes "
            f"(prepared in {time.monotonic() - started:.1f} s); "
            f"load average {os.getloadavg()[0]:.2f}")
        pg_pid = postmaster_pid(dsn)
        sides = [Round(count, innocent=args.innocent) for count in args.counts] + [
            Round(0, innocent=args.innocent, flood=kind, flooders=args.flooders)
            for kind in args.flood_kinds]
        for side in sides:
            log(f"== {label(side)} (load average {os.getloadavg()[0]:.2f} before)")
            result = run_round(side, dsn, party, args, workdir, pg_pid)
            log(f"  {row(result)}")
            if result.abuser_errors or result.abuser_closes or result.snapshot_errors:
                log(f"  abuser errors {result.abuser_errors}, closes {result.abuser_closes}, "
                    f"innocent snapshot errors {result.snapshot_errors}")
            if result.vote_errors or result.voter_late_max_s > 0.1 or result.seed_closes:
                log(f"  voter: {result.vote_errors} errors, up to "
                    f"{result.voter_late_max_s * 1e3:.0f} ms behind its schedule; "
                    f"seed clients closed: {result.seed_closes or 'none'}")
            rounds.append(result)
    print(f"{tree}: {args.duration:g} s per round, {args.rate:g} votes/s on the innocent "
          f"event watched by {args.innocent} seed client{'s' if args.innocent != 1 else ''}, "
          f"{args.abuse_rate:g} subscribes/s per abuser on an event of "
          f"{args.big_votes} votes; {os.cpu_count()} cores\n")
    print_table(HEADER, [row(result) for result in rounds])
    if args.abuse:
        compare(rounds)
    sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rounds], indent=1))
    return rounds


if __name__ == "__main__":
    main()
