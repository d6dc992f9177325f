"""The WAL relay (partysense/db/walrelay.py, sql/wal.sql) on a real PostgreSQL.

Writers vote, change, move and delete votes concurrently on a WAL-mode
database (no trigger on their transactions); the relay streams them and
writes the change log and the tallies. Afterwards the log must be, change for
change, what each writer did (in the order it did it), replaying it must
give event_vote's GROUP BY, and so must the tallies table: also across a
relay that takes over from another, and across a slot made again (its
tallies recounted in the slot's exported snapshot while votes flow).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import pytest_twisted

from harness.faults import DedicatedPostgres
from partysense.db import sqlfiles
from partysense.db.walrelay import WalRelay
from partysense.db.walstream import parse_lsn
from tests.support import Party, eventually

pytestmark = pytest.mark.database


@pytest.fixture
def relays(wal_dsn: str) -> Iterator[Any]:
    from twisted.internet import reactor

    made: list[WalRelay] = []

    def make() -> WalRelay:
        relay = WalRelay(wal_dsn, reactor, retry=0.2)
        made.append(relay)
        relay.startService()
        return relay

    yield make
    for relay in made:
        if relay.running:
            pytest_twisted.blockon(relay.stopService())


class Writers:
    """Threads that vote as a party does, each remembering what it did, in order."""

    def __init__(self, dsn: str, events: list[int], tracks: list[int], count: int,
                 interval: float = 0.0) -> None:
        """``interval``: seconds each writer waits between two transactions."""
        self.dsn, self.events, self.tracks = dsn, events, tracks
        self.interval = interval
        self.done: list[list[tuple[str, int]]] = [[] for _ in range(count)]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(count)]
        for thread in self.threads:
            thread.start()

    def _run(self, number: int) -> None:
        rng = random.Random(number)
        connection = psycopg2.connect(self.dsn)
        connection.autocommit = True
        mine: list[int] = []
        with connection.cursor() as cursor:
            while not self.stop.wait(self.interval):
                action = rng.random()
                if not mine or action < 0.5:
                    cursor.execute("INSERT INTO event_vote (event_id, track_id, user_id) "
                                   "VALUES (%s, %s, %s) RETURNING id",
                                   (rng.choice(self.events), rng.choice(self.tracks), number))
                    mine.append(cursor.fetchone()[0])
                    self.done[number].append(("insert", mine[-1]))
                elif action < 0.75:
                    vote = rng.choice(mine)
                    cursor.execute("UPDATE event_vote SET is_positive = NOT is_positive "
                                   "WHERE id = %s", (vote,))
                    self.done[number].append(("update", vote))
                elif action < 0.85:
                    vote = rng.choice(mine)
                    cursor.execute("UPDATE event_vote SET track_id = %s WHERE id = %s "
                                   "AND track_id <> %s", (self.tracks[0], vote, self.tracks[0]))
                    if cursor.rowcount:
                        self.done[number] += [("delete", vote), ("insert", vote)]
                else:
                    vote = mine.pop(rng.randrange(len(mine)))
                    cursor.execute("DELETE FROM event_vote WHERE id = %s", (vote,))
                    self.done[number].append(("delete", vote))
        connection.close()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def party_of(dsn: str) -> tuple[list[int], list[int]]:
    with Party(dsn) as party:
        return ([party.event(f"Party {n}") for n in range(3)],
                [party.track(f"Song {n}", f"Artist {n}") for n in range(4)])


def log_of(dsn: str) -> list[tuple]:
    with Party(dsn) as party:
        return party.query("SELECT seq, op, vote_id, event_id, track_id, up, prev_up "
                           "FROM partysense_change ORDER BY seq")


def grouped(dsn: str) -> dict[tuple[int, int], tuple[int, int]]:
    with Party(dsn) as party:
        return {(e, t): (up, down) for e, t, up, down in party.query(
            "SELECT event_id, track_id, count(*) FILTER (WHERE is_positive), "
            "count(*) FILTER (WHERE NOT is_positive) FROM event_vote GROUP BY 1, 2")}


def tally_table(dsn: str) -> dict[tuple[int, int], tuple[int, int]]:
    with Party(dsn) as party:
        return {(e, t): (up, down) for e, t, up, down in party.query(
            "SELECT event_id, track_id, up, down FROM partysense_tally "
            "WHERE up <> 0 OR down <> 0")}


def replayed(log: list[tuple], start: dict | None = None) -> dict[tuple[int, int], tuple]:
    counts: dict[tuple[int, int], list[int]] = {k: list(v) for k, v in (start or {}).items()}
    for _, op, _, event, track, up, prev in log:
        side = counts.setdefault((event, track), [0, 0])
        if op in ("update", "delete"):
            side[0 if prev else 1] -= 1
        if op in ("insert", "update"):
            side[0 if up else 1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items() if v != [0, 0]}


async def caught_up(dsn: str, relay: WalRelay) -> None:
    """The relay has written everything committed so far."""
    with Party(dsn) as party:
        target = parse_lsn(party.query("SELECT pg_current_wal_lsn()::text")[0][0])
    await eventually(lambda: relay.acknowledged_lsn >= target, "the relay to catch up",
                     timeout=30)


def per_vote(log: list[tuple]) -> dict[int, list[str]]:
    ops: dict[int, list[str]] = {}
    for _, op, vote, *_ in log:
        ops.setdefault(vote, []).append(op)
    return ops


def expected_per_vote(writers: Writers) -> dict[int, list[str]]:
    ops: dict[int, list[str]] = {}
    for done in writers.done:
        for op, vote in done:
            ops.setdefault(vote, []).append(op)
    return ops


async def relaying(relays: Any) -> WalRelay:
    """A new relay, once it holds the slot."""
    relay: WalRelay = relays()
    await eventually(lambda: relay.state == "relaying", "the relay to take the slot")
    return relay


async def logged_exactly(dsn: str, relay: WalRelay, writers: Writers) -> list[tuple]:
    """Once caught up: the log is, vote by vote, what the writers did, and it and
    the tallies both count what event_vote holds. Returns the log."""
    await caught_up(dsn, relay)
    log = log_of(dsn)
    assert per_vote(log) == expected_per_vote(writers)
    assert replayed(log) == grouped(dsn) == tally_table(dsn)
    return log


@pytest_twisted.ensureDeferred
async def test_concurrent_writers_are_logged_exactly_once_in_commit_order(
        wal_dsn: str, relays: Any) -> None:
    events, tracks = party_of(wal_dsn)
    relay = await relaying(relays)
    writers = Writers(wal_dsn, events, tracks, 6)
    from twisted.internet import reactor, task

    await task.deferLater(reactor, 2.0, lambda: None)  # let them write meanwhile
    writers.finish()
    log = await logged_exactly(wal_dsn, relay, writers)
    assert len(log) > 100 and relay.relayed == len(log)
    # Each row's prev is what the vote was at the row before it: commit order.
    last: dict[int, bool] = {}
    for _, op, vote, _, _, up, prev in log:
        if op != "insert":
            assert last.get(vote) == prev, (vote, op)
        last[vote] = up


@pytest_twisted.ensureDeferred
async def test_a_standby_takes_over_without_losing_or_doubling(
        wal_dsn: str, relays: Any) -> None:
    events, tracks = party_of(wal_dsn)
    first = await relaying(relays)
    second = relays()
    await eventually(lambda: second.state == "standby", "the second to wait")
    writers = Writers(wal_dsn, events, tracks, 4)
    from twisted.internet import reactor, task

    await task.deferLater(reactor, 1.0, lambda: None)
    await first.stopService()  # mid-flow: what it had not written, the next one writes
    await eventually(lambda: second.state == "relaying", "the standby to take over")
    await task.deferLater(reactor, 1.0, lambda: None)
    writers.finish()
    log = await logged_exactly(wal_dsn, second, writers)
    assert first.relayed > 0 and second.relayed > 0
    assert first.relayed + second.relayed == len(log)


@pytest_twisted.ensureDeferred
async def test_a_slot_made_again_recounts_the_tallies_in_its_own_snapshot(
        wal_dsn: str, relays: Any) -> None:
    events, tracks = party_of(wal_dsn)
    writers = Writers(wal_dsn, events, tracks, 4)  # votes flow throughout
    try:
        relay = relays()
        await eventually(lambda: relay.relayed > 50, "the relay to write some")
        await relay.stopService()
        old_log = log_of(wal_dsn)
        with Party(wal_dsn) as party:
            party.query("SELECT pg_drop_replication_slot(%s)", (relay.slot,))
        again = relays()
        await eventually(lambda: again.relayed > 50, "a new slot, and changes written")
    finally:
        writers.finish()
    await caught_up(wal_dsn, again)
    log = log_of(wal_dsn)
    assert log[0][0] > old_log[-1][0] + 1  # a gap no cursor crosses unseen
    assert replayed(log) != grouped(wal_dsn)  # the log alone no longer counts...
    assert tally_table(wal_dsn) == grouped(wal_dsn)  # ...the tallies do


@pytest_twisted.ensureDeferred
async def test_truncate_is_relayed_as_one_delete_per_vote(wal_dsn: str, relays: Any) -> None:
    events, tracks = party_of(wal_dsn)
    relay = await relaying(relays)
    with Party(wal_dsn, wait_relayed=False) as party:  # the relay runs on our reactor
        votes = [party.vote(events[0], tracks[n % 4], up=n % 3 != 0) for n in range(7)]
        party.query("TRUNCATE event_vote")
    await caught_up(wal_dsn, relay)
    log = log_of(wal_dsn)
    deletes = [row for row in log if row[1] == "delete"]
    assert sorted(row[2] for row in deletes) == votes
    assert replayed(log) == {} == tally_table(wal_dsn)


@pytest.mark.embedded_only  # a PostgreSQL of its own, from the embedded wheel
@pytest_twisted.ensureDeferred
async def test_a_slot_invalidated_by_max_slot_wal_keep_size_is_made_again(
        tmp_path: Path) -> None:
    """A relay gone while more WAL than max_slot_wal_keep_size was written: PostgreSQL
    invalidates its slot instead of keeping the WAL; the next relay makes a new one,
    the tallies are counted again and the log starts over past a gap."""
    from twisted.internet import reactor

    server = DedicatedPostgres(tmp_path)
    server.start("max_slot_wal_keep_size=1MB")
    relays: list[WalRelay] = []
    try:
        dsn = server.database()
        sqlfiles.install(dsn, wal=True)
        events, tracks = party_of(dsn)
        relays.append(WalRelay(dsn, reactor, retry=0.2))
        relays[0].startService()
        await eventually(lambda: relays[0].state == "relaying", "the relay to take the slot")
        with Party(dsn, wait_relayed=False) as party:
            for n in range(5):
                party.vote(events[0], tracks[n % 4], up=n % 2 == 0)
            await caught_up(dsn, relays[0])
            old_log = log_of(dsn)
            await relays[0].stopService()
            party.vote(events[1], tracks[0], up=False)  # while nobody relays
            party.query("CREATE TABLE ballast (b text)")
            for _ in range(6):  # past 1 MB and a segment, then a checkpoint
                party.query("INSERT INTO ballast SELECT repeat('x', 1000) "
                            "FROM generate_series(1, 3000)")
                party.query("SELECT pg_switch_wal()")
            party.query("CHECKPOINT")
            assert party.query("SELECT wal_status FROM pg_replication_slots "
                               "WHERE slot_name = %s", (relays[0].slot,)) == [("lost",)]
        relays.append(WalRelay(dsn, reactor, retry=0.2))
        relays[1].startService()
        await eventually(lambda: relays[1].state == "relaying", "a new slot")
        with Party(dsn, wait_relayed=False) as party:
            party.vote(events[1], tracks[1])
        await caught_up(dsn, relays[1])
        log = log_of(dsn)
        assert len(old_log) == 7 and log and log[0][0] > old_log[-1][0] + 1  # a gap
        assert tally_table(dsn) == grouped(dsn)  # the vote made while away included
    finally:
        for relay in relays:
            if relay.running:
                await relay.stopService()
        server.close()


@pytest_twisted.ensureDeferred
async def test_each_change_is_announced_signed_in_seq_order_as_the_log_reads_it(
        wal_dsn: str, relays: Any) -> None:
    """Every logged change is notified on its event's channel, then on the firehose,
    in seq order across batches and within one, and each envelope is byte for byte
    partysense_sign(partysense_notified_payload(...)) of its log row: what the
    listen mode's trigger sends and what a read of the log gives (a shortened
    payload past 7,900 bytes, a NULL name, quotes and non-ASCII included)."""
    with Party(wal_dsn, wait_relayed=False) as party:
        party.query("ALTER TABLE event_event ALTER COLUMN title TYPE text")
        events = [party.event('Quotes " and \\ and ünïcödé'), party.event("\x01" * 3000)]
        tracks = [party.track("Song", "Artist"), party.track(None, "Nobody")]
    listener = psycopg2.connect(wal_dsn)
    listener.autocommit = True
    try:
        with listener.cursor() as cursor:
            for channel in ["firehose"] + [f"event_{e}" for e in events]:
                cursor.execute(f"LISTEN {channel}")
        relay = await relaying(relays)
        with Party(wal_dsn, wait_relayed=False) as party:
            votes = [party.vote(events[n % 2], tracks[n % 3 % 2], up=n % 3 != 0)
                     for n in range(6)]
            # Many changes in one transaction: one batch, in one statement.
            party.query("BEGIN")
            for n in range(40):
                party.query("INSERT INTO event_vote (event_id, track_id, user_id) "
                            "VALUES (%s, %s, 1)", (events[n % 2], tracks[n % 2]))
            party.query("UPDATE event_vote SET is_positive = NOT is_positive WHERE id = %s",
                        (votes[0],))
            party.query("DELETE FROM event_vote WHERE id = %s", (votes[1],))
            party.query("COMMIT")
        await caught_up(wal_dsn, relay)
        with Party(wal_dsn) as party:
            expected = party.query(
                "SELECT c.event_id, partysense_sign(partysense_notified_payload("
                "c.seq, c.op, c.vote_id, c.event_id, e.title, c.track_id, m.name, m.artist, "
                "c.up, c.prev_up, c.committed_at)) "
                "FROM partysense_change c LEFT JOIN event_event e ON e.id = c.event_id "
                "LEFT JOIN music_view m ON m.id = c.track_id ORDER BY c.seq")
        assert len(expected) == 4 + 2 * 2 + 40 + 2  # a down-vote: its insert, its update
        heard: list[tuple[str, str]] = []
        await eventually(lambda: listener.poll() or (
            heard.extend((n.channel, n.payload) for n in listener.notifies),
            listener.notifies.clear(), len(heard) >= 2 * len(expected))[-1],
            "every notification")
        assert heard == [pair for event, envelope in expected
                         for pair in ((f"event_{event}", envelope), ("firehose", envelope))]
        assert all(envelope.startswith("ps1 ") for _, envelope in expected)
        assert any('"truncated" : true' in envelope for _, envelope in expected)
        assert any('"track" : null' in envelope for _, envelope in expected)
    finally:
        listener.close()
