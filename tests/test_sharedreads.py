"""Snapshots and replays asked for at once share a query (partysense/reads/sharedreads.py)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from harness.faults import event_with_track
from partysense.db.changelog import TALLY_QUERY, Replay, Snapshot, replay_since, take_snapshot
from partysense.db.queries import QueryService
from partysense.reads.sharedreads import FEW_CHANGES, SharedReads
from tests.fakes import Following, ManualQueries, ReadUpTo
from tests.support import Party


def snapshot(cursor: int) -> Snapshot:
    return Snapshot(cursor=cursor, title="E", tracks=[])


@pytest.mark.logic
def test_a_storm_of_askers_costs_two_queries_per_event() -> None:
    queries = ManualQueries()
    reads = SharedReads(queries, Clock(), reuse=0.0)
    first = [reads.snapshot(7) for _ in range(1000)][:1]
    assert len(queries.running) == 1  # the first asker's query runs at once
    later = [reads.snapshot(7) for _ in range(1000)]
    other = reads.snapshot(8)
    assert [args for _, args, _ in queries.running] == [(7, TALLY_QUERY), (8, TALLY_QUERY)]
    queries.running[0][2].callback(snapshot(1))
    assert first[0].result == (snapshot(1), [])
    # Those who asked while it ran were not handed it: the next one serves them all.
    assert not later[0].called and len(queries.running) == 3
    assert queries.running[2][0] is take_snapshot
    queries.running[2][2].callback(snapshot(2))
    assert {d.result[0].cursor for d in later} == {2}
    queries.running[1][2].callback(snapshot(80))
    assert other.result == (snapshot(80), [])
    assert reads.queries == 3


@pytest.mark.logic
def test_for_a_second_an_events_tallies_are_reused_with_the_changes_since() -> None:
    clock = Clock()
    queries = ManualQueries()
    reads = SharedReads(queries, clock, reuse=1.0)
    reads.snapshot(7)
    queries.running[0][2].callback(snapshot(100))
    clock.advance(0.5)
    again = reads.snapshot(7)
    # No second GROUP BY: the changes after the kept snapshot's cursor instead.
    interaction, args, answer = queries.running[1]
    assert (interaction, args) == (replay_since, (7, 100, TALLY_QUERY))
    answer.callback(Replay(changes=["change 101", "change 102"]))  # type: ignore[list-item]
    assert again.result == (snapshot(100), ["change 101", "change 102"])
    clock.advance(0.5)  # a second old: asked afresh
    reads.snapshot(7)
    assert queries.running[2][0] is take_snapshot


@pytest.mark.logic
def test_replays_are_shared_by_askers_of_the_same_cursor_only() -> None:
    queries = ManualQueries()
    reads = SharedReads(queries, Clock())
    same = [reads.replay(7, 100), reads.replay(7, 100)]
    other = reads.replay(7, 90)
    assert sorted(args for _, args, _ in queries.running) == [(7, 90, TALLY_QUERY),
                                                             (7, 100, TALLY_QUERY)]
    for _, args, answer in queries.running:
        answer.callback(f"after {args[1]}")
    assert [d.result for d in same] == ["after 100", "after 100"]
    assert other.result == "after 90"


@pytest.mark.logic
def test_a_failed_query_fails_its_askers_and_the_next_batch_runs() -> None:
    queries = ManualQueries()
    reads = SharedReads(queries, Clock())
    first = reads.snapshot(7)
    waiting = reads.snapshot(7)
    queries.running[0][2].errback(RuntimeError("lost"))
    failures: list[Any] = []
    first.addErrback(failures.append)
    assert failures and failures[0].check(RuntimeError)
    assert len(queries.running) == 2 and not waiting.called


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_concurrent_snapshots_of_a_real_event_agree_with_sql(
        db_dsn: str, party: Party) -> None:
    from twisted.internet import reactor

    event_id, track_id = event_with_track(db_dsn)
    for up in (True, False, True):
        party.vote(event_id, track_id, up=up)
    queries = QueryService(db_dsn, reactor)
    queries.startService()
    try:
        await queries.whenConnected()
        reads = SharedReads(queries, reactor)
        answers = await defer.gatherResults([reads.snapshot(event_id) for _ in range(500)])
        assert reads.queries <= 2
        snapshots = [snapshot for snapshot, _ in answers]
        tallies = {t["tid"]: (t["up"], t["down"]) for t in snapshots[0].tracks}
        assert tallies == party.tallies(event_id)
        assert {s.cursor for s in snapshots} <= {snapshots[0].cursor, snapshots[-1].cursor}
    finally:
        await queries.stopService()


@pytest.mark.logic
def test_while_the_listener_has_read_nothing_newer_a_kept_read_needs_no_query() -> None:
    clock = Clock()
    queries = ManualQueries()
    listener = ReadUpTo()
    listener.read_up_to = 100
    reads = SharedReads(queries, clock, reuse=1.0, listener=listener)
    first = reads.snapshot(7)
    waited = [reads.snapshot(7) for _ in range(500)]  # asked while the first ran
    queries.running[0][2].callback(snapshot(100))
    later = [reads.snapshot(7) for _ in range(500)]
    assert len(queries.running) == 1 and reads.queries == 1
    assert all(d.result == (snapshot(100), []) for d in [first, *waited, *later])
    assert listener.asked[-1] == ("event_7", 100)
    resumed = reads.replay(7, 100)  # a v2 client resuming from that cursor
    assert resumed.result.changes == [] and len(queries.running) == 1


@pytest.mark.logic
def test_once_the_listener_has_read_past_it_a_kept_read_is_brought_up_to_date() -> None:
    clock = Clock()
    queries = ManualQueries()
    listener = ReadUpTo()
    reads = SharedReads(queries, clock, reuse=1.0, listener=listener)
    reads.snapshot(7)
    queries.running[0][2].callback(snapshot(100))
    listener.read_up_to = 102  # changes 101 and 102 were handed on before these asked
    asked = [reads.snapshot(7) for _ in range(3)]
    interaction, args, answer = queries.running[1]
    assert (interaction, args) == (replay_since, (7, 100, TALLY_QUERY))
    answer.callback(Replay(changes=["change 101", "change 102"], newest=102))  # type: ignore[list-item]
    assert all(d.result == (snapshot(100), ["change 101", "change 102"]) for d in asked)
    # The event as of 102 is known now: the next asker needs no query.
    again = reads.snapshot(7)
    assert again.result == (snapshot(100), ["change 101", "change 102"])
    assert len(queries.running) == 2
    listener.read_up_to = 103
    reads.snapshot(7)
    assert len(queries.running) == 3  # change 103: read from the log again
    clock.advance(1.0)  # the tallies are a second old: a fresh GROUP BY
    reads.snapshot(7)
    assert queries.running[3][0] is take_snapshot


@pytest.mark.logic
def test_nothing_kept_holds_once_the_log_went_back() -> None:
    """A restored database: the listener counts again from a lower seq."""
    queries = ManualQueries()
    listener = ReadUpTo()
    listener.read_up_to = 100
    reads = SharedReads(queries, Clock(), reuse=1.0, listener=listener)
    reads.snapshot(7)
    queries.running[0][2].callback(snapshot(100))
    listener.read_up_to = 40  # nothing after 40 read: yet the kept 100 is another history
    reads.snapshot(7)
    assert len(queries.running) == 2 and queries.running[1][0] is replay_since


@pytest.mark.logic
def test_a_kept_read_that_holds_outlives_its_second_while_it_has_few_changes() -> None:
    clock = Clock()
    queries = ManualQueries()
    listener = ReadUpTo()
    listener.read_up_to = 100
    reads = SharedReads(queries, clock, reuse=1.0, listener=listener)
    reads.snapshot(7)
    queries.running[0][2].callback(snapshot(100))
    clock.advance(60.0)  # nobody voted for a minute
    assert reads.snapshot(7).result == (snapshot(100), [])
    assert len(queries.running) == 1
    listener.read_up_to = 101  # a vote: read from the log again
    reads.snapshot(7)
    assert len(queries.running) == 2 and queries.running[1][0] is take_snapshot


@pytest.mark.logic
def test_a_followed_read_holds_however_busy_the_log_while_its_channel_is_listened() -> None:
    """Issue 15: on a busy daemon every kept read went stale at the next vote
    anywhere; a client cycling through events cost a snapshot each."""
    clock = Clock()
    queries = ManualQueries()
    listener = Following()
    listener.read_up_to = 100
    listener.floors["event_7"] = 90
    reads = SharedReads(queries, clock, reuse=1.0, listener=listener, follow=True)
    reads.snapshot(7)
    queries.running[0][2].callback(snapshot(100))
    for seq in range(101, 151):  # other events' votes, read and handed on
        listener.hand_on("event_8", seq)
    mine = listener.hand_on("event_7", 151)
    clock.advance(60.0)
    assert reads.snapshot(7).result == (snapshot(100), [mine])
    assert reads.replay(7, 100).result.changes == [mine]
    assert len(queries.running) == 1
    # UNLISTENed and LISTENed again later: what came between was not followed.
    listener.floors["event_7"] = 160
    listener.hand_on("event_8", 161)
    reads.snapshot(7)
    assert len(queries.running) == 2


@pytest.mark.logic
def test_a_followed_read_of_a_busy_event_is_read_afresh_past_a_few_changes() -> None:
    queries = ManualQueries()
    listener = Following()
    listener.floors["event_7"] = 0
    reads = SharedReads(queries, Clock(), reuse=0.0, listener=listener, follow=True)
    reads.snapshot(7)
    queries.running[0][2].callback(snapshot(0))
    for seq in range(1, FEW_CHANGES + 1):
        listener.hand_on("event_7", seq)
    assert len(reads.snapshot(7).result[1]) == FEW_CHANGES and len(queries.running) == 1
    listener.hand_on("event_7", FEW_CHANGES + 1)  # one more: no longer followed
    reads.snapshot(7)
    assert len(queries.running) == 2
