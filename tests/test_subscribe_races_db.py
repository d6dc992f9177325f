"""Races that need the real thing: the listener's own LISTEN/UNLISTEN traffic
half done, a connection lost or busy under a queue of queries, a request cut
off by a lost database.

The races of a v2 session's own (the client leaves, unsubscribes or
subscribes again while the database answers) need only its interfaces:
they are logic tests, in tests/test_subscribe_races.py.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from harness.faults import QUERIES, terminate_listener
from partysense.db.listener import ListenerService
from partysense.db.pgservice import NotConnected
from partysense.db.queries import QueryService
from tests.support import TEST_SOURCE, Party, eventually

# -- the listener's half of it -------------------------------------------------


def _listener(dsn: str) -> ListenerService:
    from twisted.internet import reactor

    return ListenerService(dsn, reactor)


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_when_listening_waits_for_the_listen_after_a_pending_unlisten(
        db_dsn: str) -> None:
    service = _listener(db_dsn)
    service.startService()
    try:
        await service.whenConnected()
        service.listen("event_1")
        await service.whenListening("event_1")
        await eventually(lambda: not service._syncing, "the LISTEN round to end")
        service.unlisten("event_1")  # UNLISTEN sent, not answered yet
        assert service._syncing
        service.listen("event_1")    # a new first subscriber, at once
        listening = service.whenListening("event_1")
        # Firing now would let a snapshot run between the UNLISTEN and the
        # LISTEN again, and miss what commits in between.
        assert not listening.called
        await listening
        rows = await service.runQuery("SELECT pg_listening_channels()")
        assert {row[0] for row in rows} == {"event_1"}
    finally:
        service.stopService()


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_when_listening_gives_up_when_the_channel_is_no_longer_wanted(
        db_dsn: str) -> None:
    service = _listener(db_dsn)
    service.startService()
    try:
        await service.whenConnected()
        service.listen("event_1")  # its LISTEN is out: event_2 waits for the next round
        service.listen("event_2")
        waiting = service.whenListening("event_2")
        service.unlisten("event_2")  # its only subscriber left before the LISTEN
        await eventually(lambda: "event_1" in service.channels and not service._syncing,
                         "the LISTENs to settle")
        assert waiting.called, "a waiter nobody will ever fire holds its client forever"
        try:
            await waiting
        except NotConnected:
            pass
        assert service.channels == frozenset({"event_1"})
    finally:
        service.stopService()


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_every_query_queued_on_a_lost_connection_is_answered(db_dsn: str) -> None:
    """A storm of subscribes queues many lookups; the connection dies under them."""
    service = _listener(db_dsn)
    service.startService()
    try:
        await service.whenConnected()
        answers: list[Any] = []
        for _ in range(1000):
            service.runQuery("SELECT 1").addBoth(answers.append)
        assert terminate_listener(db_dsn) == 1  # blocks the reactor: all still queued
        await eventually(lambda: len(answers) == 1000, "an answer to every query", 15)
        # The first may have been answered before the kill; none is left hanging.
        assert {type(answer.value) for answer in answers[1:]} == {NotConnected}
    finally:
        service.stopService()


class ProbeWatchedQueries(QueryService):
    """The real QueryService; counts the deadlines that passed while its
    connection was still answering other queries (so they started again)."""

    deadlines_passed_while_answering = 0

    def _before_deadline(self, *args: Any, **kwargs: Any) -> Any:
        answering = kwargs.get("alive")
        if answering is not None:
            def alive() -> bool:
                if answering():
                    self.deadlines_passed_while_answering += 1
                    return True
                return False
            kwargs["alive"] = alive
        return super()._before_deadline(*args, **kwargs)


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_a_busy_connection_is_not_taken_for_a_silent_one(db_dsn: str) -> None:
    """The probe waits in line behind clients' queries; answers still coming mean alive."""
    from twisted.internet import reactor

    # No cap on waiting queries here: the point is a long queue.
    service = ProbeWatchedQueries(db_dsn, reactor, probe_interval=0.3, probe_timeout=1.0,
                                  max_waiting=None)
    service.startService()
    try:
        await service.whenConnected()
        # A queue that takes 3 s in all (well past the probe's 0.3 s interval
        # plus its 1 s deadline) while an answer comes every 20 ms: busy by
        # construction, not by the machine's speed (20,000 "SELECT 1" were
        # sometimes all answered before the deadline could pass).
        answers = await defer.DeferredList(
            [service.runQuery("SELECT pg_sleep(0.02)") for _ in range(150)],
            consumeErrors=True)
        # A probe's deadline did pass behind the queue (else nothing was proven)...
        assert service.deadlines_passed_while_answering > 0, "not busy enough to prove anything"
        # ...and did not drop the connection.
        assert all(ok for ok, _ in answers), "the connection was dropped while answering"
        assert service.connected and service.reconnects == 0
    finally:
        service.stopService()


# -- losing the database in the middle of a request ----------------------------


def queries_wait_on_a_lock(dsn: str) -> bool:
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND application_name = %s "
                           "AND wait_event_type = 'Lock'", (QUERIES,))
            return bool(cursor.fetchone()[0])
    finally:
        connection.close()


class Locked:
    """A table locked by another transaction until ``release``."""

    def __init__(self, dsn: str, table: str) -> None:
        self.connection = psycopg2.connect(dsn)
        with self.connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.connection.rollback()
        self.connection.close()


@pytest.mark.daemon
def test_v2_snapshot_cut_off_by_a_lost_database_is_an_unavailable_error(
        daemon: Daemon, party: Party) -> None:
    event_id, track_id = party.event(), party.track()
    party.vote(event_id, track_id)
    with connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as client:
        # The snapshot's tally query waits (in WAL mode it counts the relay's tallies).
        locked = Locked(party.dsn, "partysense_tally" if TEST_SOURCE == "wal" else "event_vote")
        try:
            client.send(json.dumps({"type": "subscribe", "event": event_id, "id": "s"}))
            wait_for(lambda: queries_wait_on_a_lock(party.dsn), 10, "the snapshot to wait")
            assert terminate_listener(party.dsn, QUERIES) == 1
        finally:
            locked.release()
        answer = json.loads(client.recv(timeout=10))
        assert (answer["type"], answer["id"], answer["error"]) == ("error", "s", "unavailable")
        daemon.wait_healthy()
        client.send(json.dumps({"type": "subscribe", "event": event_id, "id": "again"}))
        snapshot = json.loads(client.recv(timeout=10))
        assert snapshot["type"] == "snapshot" and snapshot["id"] == "again"
    log = daemon.log()
    assert "Unhandled" not in log and "Request from" not in log, log  # not our error


@pytest.mark.daemon
def test_seed_request_cut_off_by_a_lost_database_is_try_later(
        daemon: Daemon, party: Party) -> None:
    event_id = party.event()
    with connect(daemon.ws_url, open_timeout=10) as client:
        locked = Locked(party.dsn, "event_event")  # "does the event exist?" waits
        try:
            client.send(json.dumps({"event": event_id}))
            wait_for(lambda: queries_wait_on_a_lock(party.dsn), 10, "the lookup to wait")
            assert terminate_listener(party.dsn, QUERIES) == 1
        finally:
            locked.release()
        try:
            while True:
                client.recv(timeout=10)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            code, reason = closed.rcvd.code, closed.rcvd.reason
    assert code == 1013 and "unreachable" in reason, reason
    assert "Request from" not in daemon.log()  # no traceback: not our error


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_complete_after_holds_until_a_later_change_is_read(
        db_dsn: str, party: Party) -> None:
    """What lets a storm of v2 subscribers share one read (partysense/reads/sharedreads.py)."""
    event_id = party.event()
    track = party.track()
    party.vote(event_id, track)
    channel = f"event_{event_id}"
    service = _listener(db_dsn)
    seen: list[int] = []
    service.observe(lambda _, change: seen.append(change.seq))
    service.startService()
    try:
        await service.whenConnected()
        assert not service.complete_after(channel, 10**9)  # not listened yet
        service.listen(channel)
        await service.whenListening(channel)
        rows = await service.runQuery("SELECT max(seq) FROM partysense_change")
        newest = rows[0][0]
        assert service.complete_after(channel, newest)
        party.query("INSERT INTO event_vote (event_id, track_id, user_id, is_positive) "
                    "VALUES (%s, %s, 2, true)", (event_id, track))  # one change
        await eventually(lambda: seen, "the new change to be read")
        assert len(seen) == 1 and seen[0] > newest
        assert not service.complete_after(channel, newest)  # it was handed on already
        assert service.complete_after(channel, seen[-1])
    finally:
        service.stopService()
