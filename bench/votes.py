"""The vote generator: INSERTs at a steady rate, each one timed.

Vote ids are taken from the sequence before the run, so the generator knows
a vote's id before it inserts it: t0 (CLOCK_MONOTONIC, taken just before the
INSERT) is kept per id, and the load generator matches frames by the
payload's ``vote`` key. One INSERT with an explicit direction is one change,
so one frame per subscriber.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg2

INSERT = ("INSERT INTO event_vote (id, is_positive, event_id, track_id, user_id) "
          "VALUES (%s, %s, %s, %s, %s)")


@dataclass
class Sent:
    """What the generator did: (vote id, event id, t0 ns) per vote, and timing."""

    votes: list[tuple[int, int, int]] = field(default_factory=list)
    errors: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    late_max_s: float = 0.0  # how far behind schedule an INSERT started, at worst
    commit_s: list[float] = field(default_factory=list)  # each INSERT's round trip

    def commit_quantile(self, q: float) -> float:
        ordered = sorted(self.commit_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan

    @property
    def rate(self) -> float:
        seconds = (self.finished_ns - self.started_ns) / 1e9
        return len(self.votes) / seconds if seconds > 0 else 0.0


class Generator:
    """Threads with a connection each, inserting vote i at start + i / rate."""

    def __init__(self, dsn: str, events: list[int], tracks: list[int], *,
                 threads: int | None = None, seed: int = 4) -> None:
        self.dsn = dsn
        self.events = events
        self.tracks = tracks
        self.seed = seed
        self._threads = threads
        self.connections: list[psycopg2.extensions.connection] = []

    def connect(self, count: int) -> list[int]:
        """Open the connections now (before the clients take them all); backend pids."""
        pids = []
        for _ in range(count):
            connection = psycopg2.connect(self.dsn)
            connection.autocommit = True
            self.connections.append(connection)
            pids.append(connection.get_backend_pid())
        return pids

    def reserve_ids(self, count: int) -> list[int]:
        """``count`` vote ids from event_vote's sequence, ours alone.

        On a connection opened before the service under test started: the
        Node service may hold every other connection the server allows.
        """
        with self.connections[0].cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('event_vote', 'id')) "
                "FROM generate_series(1, %s)", (count,))
            return [row[0] for row in cursor.fetchall()]

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.connections = []

    @staticmethod
    def threads_for(rate: float) -> int:
        # One INSERT with its NOTIFY takes ~1-3 ms here; a thread per ~150/s
        # keeps the schedule when commits slow down under load.
        return max(2, min(16, math.ceil(rate / 150)))

    def warm_up(self, progress: Callable[[], tuple[int, int]], timeout: float) -> int:
        """Rounds of one vote per event until every client has had a frame.

        ``progress()`` says (clients that had a frame, clients open). After a
        round, wait while that number still grows, so that a big crowd is not
        flooded with rounds it has not read yet. Returns the votes sent.
        """
        cursor = self.connections[0].cursor()
        rng = random.Random(self.seed)
        sent = 0
        deadline = time.monotonic() + timeout
        warm, total = progress()
        while warm < total and time.monotonic() < deadline:
            for event_id in self.events:
                cursor.execute(
                    "INSERT INTO event_vote (event_id, track_id, user_id) VALUES (%s, %s, 0)",
                    (event_id, rng.choice(self.tracks)))
                sent += 1
            grew_at = time.monotonic()
            while warm < total and time.monotonic() - grew_at < 1.0 \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
                now_warm, total = progress()
                if now_warm > warm:
                    grew_at = time.monotonic()
                warm = now_warm
        return sent

    def run(self, ids: list[int], rate: float, deadline_s: float) -> Sent:
        """Insert one vote per id at ``rate``/s; give up on what is left at the deadline."""
        rng = random.Random(self.seed)
        plan = [(vote_id, self.events[n % len(self.events)], rng.choice(self.tracks),
                 rng.random() < 0.7) for n, vote_id in enumerate(ids)]
        sent = Sent()
        lock = threading.Lock()
        position = iter(range(len(plan)))
        start = time.monotonic_ns() + 50_000_000
        stop_at = start + int(deadline_s * 1e9)
        sent.started_ns = start

        def work(connection: psycopg2.extensions.connection) -> None:
            cursor = connection.cursor()
            while True:
                with lock:
                    n = next(position, None)
                if n is None:
                    return
                due = start + int(n * 1e9 / rate)
                delay = due - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                vote_id, event_id, track_id, up = plan[n]
                t0 = time.monotonic_ns()
                if t0 > stop_at:
                    return
                try:
                    cursor.execute(INSERT, (vote_id, up, event_id, track_id, n))
                except psycopg2.Error:
                    with lock:
                        sent.errors += 1
                    continue
                t1 = time.monotonic_ns()
                with lock:
                    sent.votes.append((vote_id, event_id, t0))
                    sent.commit_s.append((t1 - t0) / 1e9)
                    sent.late_max_s = max(sent.late_max_s, -delay / 1e9)

        workers = [threading.Thread(target=work, args=(connection,), daemon=True)
                   for connection in self.connections]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        sent.finished_ns = time.monotonic_ns()
        return sent
