"""The WAL source's transport (partysense/db/walstream.py) on a real PostgreSQL.

A logical replication connection driven by the reactor: commit order from
the WAL, the pgoutput parser on live bytes of whichever PostgreSQL runs the
tests, acknowledgements reaching a permanent slot and its replay, a
temporary slot going with its connection, and a killed WAL sender noticed.
Needs ``wal_level = logical`` (the embedded server has it; CI sets it on its
PostgreSQL 15).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
import pytest_twisted

from partysense.db import walsetup
from partysense.db.waldecoder import Transaction
from partysense.db.walstream import SLOT_NAME, Started, WalStream, format_lsn, parse_lsn
from tests.support import Party, eventually
from tests.test_pgoutput import transactions as captured_transactions

pytestmark = pytest.mark.database


class Received:
    """A stream's transactions and losses, as its callbacks got them."""

    def __init__(self) -> None:
        self.transactions: list[Transaction] = []
        self.lost: list[str] = []


@pytest.fixture
def streams(wal_dsn: str) -> Iterator[Any]:
    """``streams(**options)``: a WalStream and what it received; all closed after
    the test, and any permanent slot made dropped."""
    from twisted.internet import reactor

    made: list[WalStream] = []

    def make(**options: Any) -> tuple[WalStream, Received]:
        received = Received()
        options.setdefault("slot", f"test_{uuid.uuid4().hex[:16]}")
        options.setdefault("publication", walsetup.PUBLICATION)
        stream = WalStream(reactor, on_transaction=received.transactions.append,
                           on_lost=received.lost.append, **options)
        made.append(stream)
        return stream, received

    yield make
    for stream in made:
        stream.close()
    with Party(wal_dsn) as party:
        for stream in made:
            party.query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s AND NOT active", (stream.slot,))


def slot_row(dsn: str, slot: str) -> tuple | None:
    with Party(dsn) as party:
        rows = party.query("SELECT active, confirmed_flush_lsn::text, temporary, active_pid "
                           "FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return rows[0] if rows else None


def test_lsn_text_round_trips() -> None:
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert format_lsn(0x16B374D848) == "16/B374D848"
    assert SLOT_NAME.fullmatch("partysense_1") and not SLOT_NAME.fullmatch("Bad-name")
    with pytest.raises(ValueError, match="not a slot name"):
        WalStream(None, slot="x; DROP", publication="p", on_transaction=print, on_lost=print)


@pytest_twisted.ensureDeferred
async def test_transactions_arrive_in_commit_order_with_their_rows(
        wal_dsn: str, streams: Any) -> None:
    stream, received = streams()
    started = await stream.start(wal_dsn)
    assert isinstance(started, Started) and started.created and started.lsn > 0
    with Party(wal_dsn) as party:
        event, track = party.event("Order"), party.track()
        early = psycopg2.connect(wal_dsn)  # writes first, commits last
        with early.cursor() as cursor:
            cursor.execute("SELECT pg_current_xact_id()::text::bigint")
            early_xid = cursor.fetchone()[0]
            cursor.execute("INSERT INTO event_vote (event_id, track_id, user_id) "
                           "VALUES (%s, %s, 1) RETURNING id", (event, track))
            early_vote = cursor.fetchone()[0]
        late_vote = party.vote(event, track, up=False)  # insert, then update: two commits
        early.commit()
        early.close()
    await eventually(lambda: len(received.transactions) >= 3, "three transactions")
    late_insert, late_update, first = received.transactions
    assert first.xid == early_xid
    assert [c.new["id"] for c in first.changes if c.new] == [str(early_vote)]
    assert late_insert.changes[0].new == {"id": str(late_vote), "is_positive": "t",
                                          "event_id": str(event), "track_id": str(track),
                                          "user_id": "1"}
    assert late_update.changes[0].old is not None
    assert (late_update.changes[0].old["is_positive"], late_update.changes[0].new) == (
        "t", {**late_insert.changes[0].new, "is_positive": "f"})
    # Commit order is the order of the commit records, which the stream follows.
    lsns = [t.commit_lsn for t in received.transactions]
    assert lsns == sorted(lsns) and first.xid < late_insert.xid
    assert stream.received_lsn >= first.end_lsn and received.lost == []


@pytest_twisted.ensureDeferred
async def test_live_bytes_decode_as_the_captured_ones(wal_dsn: str, streams: Any) -> None:
    """The statements of tests/data/pgoutput_v1.txt, streamed from this PostgreSQL."""
    with Party(wal_dsn) as party:
        party.query("ALTER TABLE event_event ALTER COLUMN description SET STORAGE EXTERNAL")
        party.query("CREATE PUBLICATION capture FOR TABLE event_vote, event_event")
        stream, received = streams(publication="capture")
        await stream.start(wal_dsn)
        e = party.query("INSERT INTO event_event (title, description) "
                        "VALUES ('Fête \"😀\"', repeat('x', 5000)) RETURNING id")[0][0]
        e2 = party.event("Other")
        t = party.track(name="T", artist="A")
        v = party.query("INSERT INTO event_vote (event_id, track_id, user_id) "
                        "VALUES (%s, %s, NULL) RETURNING id", (e, t))[0][0]
        party.query("UPDATE event_vote SET is_positive = false WHERE id = %s", (v,))
        party.query("UPDATE event_event SET title = 'Renamed' WHERE id = %s", (e,))
        party.query("UPDATE event_event SET id = id + 1000 WHERE id = %s", (e2,))
        party.query("BEGIN; INSERT INTO event_vote (event_id, track_id, user_id) "
                    "VALUES (%s, %s, 7); DELETE FROM event_vote WHERE id = %s; COMMIT",
                    (e, t, v))
        party.query("TRUNCATE event_vote")
    expected = captured_transactions()
    await eventually(lambda: len(received.transactions) >= len(expected), "every transaction")

    def shape(transaction: Transaction) -> list[tuple]:
        """Ops, relations and the values that do not depend on ids."""
        return [(c.op, c.relation.name, c.relation.replica_identity,
                 None if c.old is None else {k: v for k, v in c.old.items() if "id" not in k},
                 None if c.new is None else {k: v for k, v in c.new.items() if "id" not in k})
                for c in transaction.changes]

    assert [shape(t) for t in received.transactions] == [shape(t) for t in expected]


@pytest_twisted.ensureDeferred
async def test_a_permanent_slot_keeps_what_was_not_acknowledged(
        wal_dsn: str, streams: Any) -> None:
    slot = f"test_{uuid.uuid4().hex[:16]}"
    stream, received = streams(slot=slot, temporary=False)
    await stream.start(wal_dsn)
    with Party(wal_dsn) as party:
        event, track = party.event(), party.track()
        party.vote(event, track)  # two transactions: insert, update
        await eventually(lambda: len(received.transactions) == 2, "the vote")
        done = received.transactions[0]
        stream.acknowledge(done.end_lsn)  # the first one only
        await eventually(lambda: parse_lsn(slot_row(wal_dsn, slot)[1]) >= done.end_lsn,
                         "the slot to move to the acknowledged position")
        stream.close()
        await eventually(lambda: not slot_row(wal_dsn, slot)[0], "the slot to be let go")
        party.vote(event, track, up=False)  # committed while nobody streams
    again, replayed = streams(slot=slot, temporary=False)
    started = await again.start(wal_dsn)
    assert not started.created and started.lsn >= done.end_lsn
    await eventually(lambda: len(replayed.transactions) == 3, "the replay")
    assert replayed.transactions[0].xid == received.transactions[1].xid  # not the acked one
    assert slot_row(wal_dsn, slot)[2] is False


@pytest_twisted.ensureDeferred
async def test_a_temporary_slot_goes_with_its_connection(wal_dsn: str, streams: Any) -> None:
    stream, _ = streams()
    await stream.start(wal_dsn)
    row = slot_row(wal_dsn, stream.slot)
    assert row is not None and row[0] is True and row[2] is True
    stream.close()
    await eventually(lambda: slot_row(wal_dsn, stream.slot) is None, "the slot to be dropped")


@pytest_twisted.ensureDeferred
async def test_a_killed_wal_sender_is_reported_once(wal_dsn: str, streams: Any) -> None:
    stream, received = streams()
    await stream.start(wal_dsn)
    pid = slot_row(wal_dsn, stream.slot)[3]
    with Party(wal_dsn) as party:
        assert party.query("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
    await eventually(lambda: received.lost, "the loss to be reported", timeout=10)
    assert len(received.lost) == 1 and stream.fileno() == -1
    stream.acknowledge(10**9)  # after the loss: nothing sent, nothing raised
    assert len(received.lost) == 1


@pytest_twisted.ensureDeferred
async def test_a_slot_name_taken_by_a_temporary_slot_fails_the_start(
        wal_dsn: str, streams: Any) -> None:
    first, _ = streams()
    await first.start(wal_dsn)
    second, received = streams(slot=first.slot)
    with pytest.raises(psycopg2.errors.DuplicateObject):
        await second.start(wal_dsn)
    assert second.fileno() == -1 and received.lost == []
