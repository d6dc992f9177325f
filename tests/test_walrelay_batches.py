"""When the WAL relay writes a batch (partysense/db/walrelay.py, BATCH_DELAY): at
once after a quiet spell, at most once per BATCH_DELAY in a burst, back to back
while behind. The database is played by a function that records each write."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from partysense.db.pgoutput import Relation
from partysense.db.waldecoder import RowChange, Transaction
from partysense.db.walrelay import BATCH_DELAY, WalRelay

pytestmark = pytest.mark.logic

EVENT_VOTE = Relation(oid=1, namespace="public", name="event_vote", replica_identity="d",
                      columns=())


def vote(n: int) -> Transaction:
    row = {"id": str(n), "event_id": "1", "track_id": "2", "is_positive": "t"}
    return Transaction(xid=n, commit_lsn=n, end_lsn=n, commit_time=0.0,
                       changes=(RowChange("insert", EVENT_VOTE, None, row),))


class Stream:
    def __init__(self) -> None:
        self.acknowledged: list[int] = []

    def acknowledge(self, lsn: int) -> None:
        self.acknowledged.append(lsn)


def relay_on(clock: Clock) -> tuple[WalRelay, list[tuple[float, list[int]]], list[Any]]:
    """A relay whose writes are recorded (time, end LSNs); ``held`` has the
    Deferred of each write, fired by the test (the database answering)."""
    relay = WalRelay("dbname=unused", clock)
    writes: list[tuple[float, list[int]]] = []
    held: list[defer.Deferred[int]] = []

    def in_thread(work: Any, batch: list[Any]) -> defer.Deferred[int]:
        writes.append((clock.seconds(), [entry[0] for entry in batch]))
        held.append(defer.Deferred())
        return held[-1]

    relay._in_thread = in_thread  # type: ignore[method-assign]
    relay._stream = Stream()  # type: ignore[assignment]
    return relay, writes, held


def test_after_a_quiet_spell_a_vote_is_written_at_once() -> None:
    clock = Clock()
    clock.advance(100)
    relay, writes, held = relay_on(clock)
    relay._take(vote(1))
    assert writes == [], "not within the transaction's own turn"
    clock.advance(0)
    assert writes == [(100.0, [1])]
    held[0].callback(1)
    clock.advance(BATCH_DELAY * 2)  # quiet again
    relay._take(vote(2))
    clock.advance(0)
    assert writes[-1] == (100.0 + BATCH_DELAY * 2, [2])


def test_a_burst_waits_for_the_rest_of_the_delay_and_shares_one_write() -> None:
    clock = Clock()
    clock.advance(100)
    relay, writes, held = relay_on(clock)
    relay._take(vote(1))
    clock.advance(0)
    held[0].callback(1)
    clock.advance(BATCH_DELAY / 5)
    for n in (2, 3, 4):  # a burst right after a write
        relay._take(vote(n))
    clock.advance(0)
    assert len(writes) == 1, "one commit per BATCH_DELAY at most"
    clock.advance(BATCH_DELAY * 3 / 5)
    assert len(writes) == 1
    clock.advance(BATCH_DELAY / 5)  # BATCH_DELAY after the first write began
    at, ends = writes[1]
    assert (at, ends) == (pytest.approx(100.0 + BATCH_DELAY), [2, 3, 4])


def test_what_comes_during_a_write_follows_it_at_once() -> None:
    clock = Clock()
    relay, writes, held = relay_on(clock)
    relay._take(vote(1))
    clock.advance(0)
    relay._take(vote(2))  # the first write still running: the database is busy
    relay._take(vote(3))
    clock.advance(BATCH_DELAY * 3)
    assert len(writes) == 1
    held[0].callback(1)  # it answers: the next batch goes now, behind it
    assert [ends for _, ends in writes] == [[1], [2, 3]]
    held[1].callback(2)
    assert relay._stream.acknowledged == [1, 3]  # type: ignore[union-attr]
