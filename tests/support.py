"""Helpers for tests: waiting on the reactor, a party in SQL, tallies, LISTEN.

The daemon process and ``wait_for`` are in harness/daemon.py (bench/ uses them too).
"""

from __future__ import annotations

import inspect
import json
import os
import select
import time
from collections.abc import Callable
from typing import Any

import psycopg2
from psycopg2 import sql

from harness.daemon import SOURCE_VARIABLE
from partysense.core.signature import open_envelope

# PARTYSENSE_TEST_SOURCE=wal runs the tests that use the ``daemon`` fixture
# (tests/conftest.py) with --source wal, on a database installed for it
# (docs/exactness.md §8).
TEST_SOURCE = os.environ.get(SOURCE_VARIABLE, "listen")


# A test whose premise is the listen mode (its triggers, its NOTIFYs): skipped
# under PARTYSENSE_TEST_SOURCE=wal, with the reason (docs/exactness.md §8).
def listen_mode_only(why: str) -> Any:
    import pytest

    return pytest.mark.skipif(TEST_SOURCE == "wal", reason=f"listen mode only: {why}")


async def eventually(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """For tests on the reactor: await ``condition()`` (a value or an awaitable)
    until it is true, failing at the deadline. The reactor runs meanwhile."""
    from twisted.internet import reactor, task

    deadline = reactor.seconds() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


def tally(counts: dict[int, list[int]], change: dict[str, Any]) -> None:
    """Apply one change message to per-track [up, down] counts, as a client must."""
    track = counts.setdefault(change["tid"], [0, 0])
    if change["op"] in ("update", "delete"):
        track[0 if change["prev"] else 1] -= 1
    if change["op"] in ("insert", "update"):
        track[0 if change["up"] else 1] += 1


def nonzero(counts: dict[int, list[int]]) -> dict[int, tuple[int, int]]:
    """Counts in the shape of Party.tallies (tracks with no votes left out)."""
    return {tid: (up, down) for tid, (up, down) in counts.items() if up or down}


class Party:
    """A database with events and tracks, and votes cast the way Django casts them."""

    def __init__(self, dsn: str, wait_relayed: bool = True) -> None:
        """``wait_relayed``: in WAL mode, wait for each vote to be logged
        (:meth:`wait_relayed`); False where the relay runs on this very thread's
        reactor, which the wait would block."""
        self.dsn = dsn
        self._wait_relayed = wait_relayed
        self.connection = psycopg2.connect(dsn)
        self.connection.autocommit = True

    def __enter__(self) -> Party:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.connection.close()

    def query(self, statement: str, params: Any = None) -> list[tuple]:
        with self.connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def event(self, title: str = "Party") -> int:
        return int(self.query("INSERT INTO event_event (title) VALUES (%s) RETURNING id",
                              (title,))[0][0])

    def track(self, name: str | None = "Song", artist: str = "Artist") -> int:
        self.query("INSERT INTO music_artist (name) VALUES (%s) ON CONFLICT DO NOTHING", (artist,))
        return int(self.query(
            "INSERT INTO music_track (artist_id, name) "
            "SELECT id, %s FROM music_artist WHERE name = %s RETURNING id", (name, artist))[0][0])

    def vote(self, event_id: int, track_id: int, up: bool = True, user_id: int = 1) -> int:
        """Django's flow: get_or_create inserts the default, save() sets the direction."""
        vote_id = int(self.query(
            "INSERT INTO event_vote (event_id, track_id, user_id) VALUES (%s, %s, %s) "
            "RETURNING id", (event_id, track_id, user_id))[0][0])
        self.query("UPDATE event_vote SET is_positive = %s WHERE id = %s", (up, vote_id))
        self.wait_relayed(vote_id, 1 if up else 2)
        return vote_id

    def wait_relayed(self, vote_id: int, changes: int, timeout: float = 15.0) -> None:
        """In WAL mode, once a relay runs (docs/exactness.md §8), the log holds a vote a
        few milliseconds after its commit: wait for its ``changes``, so that a test
        reads the log as the listen mode's trigger leaves it, at once."""
        if not self._wait_relayed or \
                not self.query("SELECT to_regclass('partysense_relay') IS NOT NULL")[0][0] or \
                not self.query("SELECT count(*) FROM partysense_relay")[0][0]:
            return
        deadline = time.monotonic() + timeout
        while self.query("SELECT count(*) FROM partysense_change WHERE vote_id = %s",
                         (vote_id,))[0][0] < changes:
            if time.monotonic() > deadline:
                raise AssertionError(f"vote {vote_id}: not in the change log after "
                                     f"{timeout} s (is a WAL relay running?)")
            time.sleep(0.01)

    def tallies(self, event_id: int) -> dict[int, tuple[int, int]]:
        rows = self.query(
            "SELECT track_id, count(*) FILTER (WHERE is_positive), "
            "count(*) FILTER (WHERE NOT is_positive) FROM event_vote WHERE event_id = %s "
            "GROUP BY track_id", (event_id,))
        return {track: (up, down) for track, up, down in rows}


class Notifications:
    """A LISTENing psycopg2 connection; ``next()`` waits for one notification."""

    def __init__(self, dsn: str, *channels: str) -> None:
        self.connection = psycopg2.connect(dsn)
        self.connection.autocommit = True
        with self.connection.cursor() as cursor:
            for channel in channels:
                cursor.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any], str]:
        """(channel, parsed payload, payload text) of the next notification.

        The payload is the one in the trigger's signed envelope, which must check
        out (the whole text is ``last_text``)."""
        deadline = time.monotonic() + timeout
        while not self.connection.notifies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no notification within {timeout} s")
            select.select([self.connection], [], [], remaining)
            self.connection.poll()
        notify = self.connection.notifies.pop(0)
        self.last_text = notify.payload
        payload = open_envelope(notify.payload, self.keys())
        return notify.channel, json.loads(payload), payload

    def keys(self) -> dict[int, bytes]:
        """The signing keys (partysense_key): every notification the trigger sends
        must check out with one of them (partysense/core/signature.py)."""
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT id, secret FROM partysense_key")
            return {key_id: bytes(secret) for key_id, secret in cursor.fetchall()}

    def close(self) -> None:
        self.connection.close()


def require_logical_decoding(dsn: str) -> None:
    """Skip a WAL-mode test on a PostgreSQL without wal_level = logical, or fail it
    where CI says the server has it (PARTYSENSE_REQUIRE_WAL=1, .ci/run)."""
    import pytest

    from partysense.db import walsetup

    problems = walsetup.read_settings(dsn).problems()
    if not problems:
        return
    if os.environ.get("PARTYSENSE_REQUIRE_WAL"):
        pytest.fail(f"PARTYSENSE_REQUIRE_WAL is set, but: {'; '.join(problems)}")
    pytest.skip(f"this PostgreSQL cannot stream: {'; '.join(problems)}")
