"""The listener's logic: backoff, stopping, deadlines, readiness, retention.

Timing logic runs on Twisted's ``Clock``/``MemoryReactorClock`` (with a real
socket that never answers where a connection is needed); everything that
touches the database runs on the real reactor against a real PostgreSQL.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock

from harness.faults import SilentProxy, committed, event_with_track, terminate_listener
from partysense.adapters.txpostgres_adapter import needs_resolving, with_resolved_host
from partysense.db.deadline import before_deadline
from partysense.db.listener import ListenerService
from partysense.db.pgservice import NotConnected, PostgresService, default_backoff
from partysense.db.queries import QueryService
from partysense.db.retention import RetentionService
from tests.support import Party, eventually

Delivered = list[tuple[str, int, str]]


def no_database() -> defer.Deferred[str]:
    return defer.fail(ConnectionRefusedError("nobody home"))


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port whose TCP handshake completes and which then never says a word."""
    server = socket.create_server(("127.0.0.1", 0), backlog=8)
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


# -- backoff ------------------------------------------------------------------------


@pytest.mark.logic
def test_backoff_grows_is_capped_and_jittered() -> None:
    random.seed(1)
    policy = default_backoff()
    delays = [[policy(attempt) for attempt in range(40)] for _ in range(20)]
    for run in delays:
        assert 0.25 <= run[0] <= 0.75
        assert all(d <= 10.5 for d in run), "capped at 10 s plus jitter"
        assert all(d >= 10.0 for d in run[6:]), "reaches the cap"
        assert run[3] > run[1] > run[0] - 0.5
    firsts = {round(run[0], 6) for run in delays}
    capped = {round(run[30], 6) for run in delays}
    assert len(firsts) > 10 and len(capped) > 10, "every retry time is jittered"


@pytest.mark.logic
def test_failed_connects_are_retried_with_the_backoff() -> None:
    clock = task.Clock()
    attempts: list[int] = []

    def backoff(attempt: int) -> float:
        attempts.append(attempt)
        return 2.0 + attempt

    service = ListenerService(no_database, clock, backoff=backoff)
    service.startService()
    assert service.state == "disconnected"
    assert "nobody home" in service.reason
    for attempt in range(4):
        [retry] = clock.getDelayedCalls()
        assert retry.getTime() == pytest.approx(clock.seconds() + 2.0 + attempt)
        clock.advance(2.0 + attempt)
    assert attempts == [0, 1, 2, 3, 4]
    service.stopService()


@pytest.mark.logic
def test_the_keeper_tells_what_it_was_handed_when_a_connection_is_gone() -> None:
    """Composed, not inherited: ``on_down`` hears every loss, the stop included."""
    clock = task.Clock()
    downs: list[str] = []
    keeper = PostgresService(no_database, clock, role="test connection",
                             application_name="partysense-live tests",
                             on_connected=lambda: downs.append("connected?!"),
                             on_down=downs.append, backoff=lambda attempt: 1.0)
    keeper.startService()
    clock.advance(1.0)
    assert len(downs) == 2 and all("nobody home" in why for why in downs)
    keeper.stopService()
    assert downs[-1] == "service stopped" and keeper.state == "stopped"


# -- stopping -----------------------------------------------------------------------


@pytest.mark.logic
def test_stop_cancels_the_pending_retry_and_leaves_nothing_scheduled() -> None:
    clock = task.Clock()
    calls: list[int] = []

    def counting_dsn() -> defer.Deferred[str]:
        calls.append(1)
        return no_database()

    service = ListenerService(counting_dsn, clock)
    service.startService()
    assert len(clock.getDelayedCalls()) == 1
    service.stopService()
    assert clock.getDelayedCalls() == []
    assert (service.state, service.reason) == ("stopped", "service stopped")
    clock.advance(3600)
    assert calls == [1], "no retry after stopService"


@pytest.mark.logic
def test_stop_while_connecting_leaves_nothing_scheduled(silent_server: int) -> None:
    reactor = MemoryReactorClock()
    dsn = make_dsn(host="127.0.0.1", port=str(silent_server), dbname="x", user="x")
    service = ListenerService(dsn, reactor, connect_timeout=5)
    service.startService()
    assert service.state == "connecting"
    assert len(reactor.getDelayedCalls()) >= 1  # the connect deadline
    service.stopService()
    reactor.advance(0)  # txpostgres reports the closed connection on the next turn
    assert reactor.getDelayedCalls() == []
    assert not reactor.getReaders() and not reactor.getWriters()
    assert service.state == "stopped"


# -- a connect that never answers -----------------------------------------------------


@pytest.mark.logic
def test_a_connect_that_never_answers_times_out(silent_server: int) -> None:
    reactor = MemoryReactorClock()
    dsn = make_dsn(host="127.0.0.1", port=str(silent_server), dbname="x", user="x")
    service = ListenerService(dsn, reactor, connect_timeout=5,
                              backoff=lambda attempt: 1.0)
    service.startService()
    reactor.advance(4.9)
    assert service.state == "connecting"
    reactor.advance(0.2)
    assert service.state == "disconnected"
    assert service.reason == "no answer from the database within 5 s"
    assert not reactor.getReaders() and not reactor.getWriters(), "the socket was closed"
    [retry] = [c for c in reactor.getDelayedCalls() if c.func == service._keeper._connect]
    assert retry.getTime() == pytest.approx(reactor.seconds() + 1.0, abs=0.01)
    service.stopService()
    reactor.advance(0)
    assert reactor.getDelayedCalls() == []


@pytest.mark.logic
@pytest_twisted.ensureDeferred
async def test_a_connect_that_never_answers_times_out_on_the_real_reactor(
        silent_server: int) -> None:
    from twisted.internet import reactor

    dsn = make_dsn(host="127.0.0.1", port=str(silent_server), dbname="x", user="x")
    service = ListenerService(dsn, reactor, connect_timeout=0.5,
                              backoff=lambda attempt: 30.0)
    service.startService()
    try:
        await eventually(lambda: service.state == "disconnected", "the connect deadline")
        assert service.reason == "no answer from the database within 0.5 s"
    finally:
        service.stopService()


# -- whenConnected --------------------------------------------------------------------


@pytest.mark.logic
def test_when_connected_fails_when_the_service_stops() -> None:
    clock = task.Clock()
    service = ListenerService(no_database, clock)
    service.startService()
    waiter = service.whenConnected()
    assert not waiter.called
    service.stopService()
    failure = _failure_of(waiter)
    assert failure.check(NotConnected)


@pytest.mark.logic
def test_when_connected_can_be_cancelled_and_is_forgotten() -> None:
    clock = task.Clock()
    service = ListenerService(no_database, clock)
    service.startService()
    waiter = service.whenConnected()
    waiter.cancel()
    assert _failure_of(waiter).check(defer.CancelledError)
    assert not service._keeper._waiting
    service.stopService()


@pytest.mark.logic
def test_when_listening_fails_when_not_connected() -> None:
    clock = task.Clock()
    service = ListenerService(no_database, clock)
    service.startService()
    assert _failure_of(service.whenListening("firehose")).check(NotConnected)
    service.stopService()


def _failure_of(d: defer.Deferred[Any]) -> Any:
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures, "the Deferred has not failed"
    return failures[0]


# -- resolving host names off the reactor thread ---------------------------------------


@pytest.mark.logic
@pytest.mark.parametrize(("dsn", "resolved"), [
    ("host=db.example dbname=x", "db.example"),
    ("postgresql://u@db.example:6432/x", "db.example"),
    ("host=127.0.0.1 dbname=x", None),
    ("host=::1 dbname=x", None),
    ("host=/var/run/postgresql dbname=x", None),
    ("host=a.example,b.example dbname=x", None),
    ("host=db.example hostaddr=10.0.0.1 dbname=x", None),
    ("dbname=x", None),
])
def test_which_hosts_are_resolved_first(dsn: str, resolved: str | None) -> None:
    assert needs_resolving(parse_dsn(dsn)) == resolved


@pytest.mark.logic
def test_resolved_addresses_become_hostaddr_and_the_name_is_kept() -> None:
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> defer.Deferred[list[str]]:
        asked.append((host, port))
        return defer.succeed(["2001:db8::5", "192.0.2.5"])

    d = with_resolved_host("host=db.example port=6432 dbname=x sslmode=verify-full", resolve)
    params = parse_dsn(_result_of(d))
    assert asked == [("db.example", 6432)]
    assert params["host"] == "db.example,db.example"  # for TLS, SNI and .pgpass
    assert params["hostaddr"] == "2001:db8::5,192.0.2.5"
    assert params["sslmode"] == "verify-full"


@pytest.mark.logic
def test_a_name_that_does_not_resolve_is_reported_and_retried() -> None:
    clock = task.Clock()

    def resolve(host: str, port: int) -> defer.Deferred[list[str]]:
        return defer.fail(socket.gaierror(-2, "Name or service not known"))

    service = ListenerService("host=nowhere.invalid dbname=x", clock,
                              resolve=resolve)
    service.startService()
    assert service.state == "disconnected"
    assert "could not resolve host 'nowhere.invalid'" in service.reason
    assert len(clock.getDelayedCalls()) == 1
    service.stopService()


def _result_of(d: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and not isinstance(results[0], Exception), results
    return results[0]


# -- against a real PostgreSQL -------------------------------------------------------




def _listener(dsn: str, delivered: Delivered, **kwargs: Any) -> ListenerService:
    from twisted.internet import reactor

    service = ListenerService(dsn, reactor, **kwargs)
    service.observe(lambda channel, change: delivered.append(
        (channel, change.seq, change.payload.decode("utf-8"))))
    return service


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_when_connected_fires_once_caught_up(db_dsn: str) -> None:
    service = _listener(db_dsn, [])
    early = service.whenConnected()
    service.startService()
    try:
        await early
        assert service.connected and service.last_seq == 0
        await service.whenConnected()  # already connected: at once
    finally:
        service.stopService()


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_killed_backend_relistens_and_replays_in_commit_order(
        db_dsn: str, party: Party) -> None:
    event_id, track_id = event_with_track(db_dsn)
    other_event = party.event("Elsewhere")
    delivered: Delivered = []
    service = _listener(db_dsn, delivered, backoff=lambda attempt: 0.2)
    service.listen(f"event_{event_id}")
    service.listen("firehose")
    service.startService()
    try:
        await service.whenConnected()
        await eventually(lambda: len(service.channels) == 2, "both LISTENs")
        party.vote(event_id, track_id)
        await eventually(lambda: len(delivered) == 2, "a live change on both channels")

        held = psycopg2.connect(db_dsn)  # a low id, committed last
        with held.cursor() as cursor:
            cursor.execute("INSERT INTO event_vote (event_id, track_id, user_id) "
                           "VALUES (%s, %s, 9)", (event_id, track_id))
        assert terminate_listener(db_dsn) == 1
        party.vote(event_id, track_id, up=False)
        party.vote(other_event, track_id)
        held.commit()
        held.close()

        await eventually(lambda: service.reconnects == 1 and service.connected, "a reconnect")
        listened = await service.runQuery("SELECT pg_listening_channels()")
        assert {row[0] for row in listened} == {f"event_{event_id}", "firehose"}
        party.vote(event_id, track_id)  # live again

        expected = {
            f"event_{event_id}": [s for s, _, _ in committed(db_dsn, event_id)],
            "firehose": [s for s, _, _ in committed(db_dsn)],
        }
        total = sum(map(len, expected.values()))
        await eventually(lambda: len(delivered) >= total, "every change")
        for channel, seqs in expected.items():
            assert [seq for ch, seq, _ in delivered if ch == channel] == seqs, channel
        assert service.replayed > 0
    finally:
        service.stopService()


@pytest.mark.database
@pytest.mark.embedded_only  # through a proxy port: see test_faults.test_silent_tcp_connection
@pytest_twisted.ensureDeferred
async def test_a_host_name_is_resolved_and_connected_by_address(db_dsn: str) -> None:
    proxy = SilentProxy(db_dsn)  # a TCP door to the test database, never silenced
    dsn = make_dsn(proxy.dsn(db_dsn), host="localhost")
    service = _listener(dsn, [])
    service.startService()
    try:
        await service.whenConnected()
        rows = await service.runQuery("SELECT inet_client_addr() IS NULL")
        assert rows == [(True,)]  # the proxy reaches PostgreSQL by its socket
        assert service.connected
    finally:
        service.stopService()
        proxy.close()


# -- retention -----------------------------------------------------------------------


def _age_every_change(party: Party, seconds: int) -> None:
    party.query("UPDATE partysense_change SET committed_at = now() - %s * interval '1 second'",
                (seconds,))


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_retention_trims_old_changes_in_batches_and_keeps_the_newest(
        db_dsn: str, party: Party) -> None:
    from twisted.internet import reactor

    event_id, track_id = event_with_track(db_dsn)
    for _ in range(5):
        party.vote(event_id, track_id, up=False)  # two changes each
    _age_every_change(party, 7200)
    party.vote(event_id, track_id, up=False)  # two young changes
    newest = committed(db_dsn)[-1]
    queries = QueryService(db_dsn, reactor)
    retention = RetentionService(queries, reactor, retention_seconds=3600, batch=3)
    queries.startService()
    retention.startService()
    try:
        await queries.whenConnected()
        await retention.trim()
        assert retention.trimmed == 10  # in four batches: 3, 3, 3, 1
        assert len(committed(db_dsn)) == 2
        # Everything old now, the newest included: all but the newest goes.
        _age_every_change(party, 7200)
        await retention.trim()
        assert committed(db_dsn) == [newest]
        await retention.trim()
        assert committed(db_dsn) == [newest]
    finally:
        retention.stopService()
        queries.stopService()


# -- when the change log does not continue where the listener left off -------------


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The listener's warnings, as text."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn and \
                event.get("log_namespace", "").startswith("partysense.db.listener"):
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


async def _outage(service: ListenerService, db_dsn: str, during: Callable[[], None]) -> None:
    """Kill the listener's backend, run ``during`` while it is away, wait for it back."""
    reconnects = service.reconnects
    assert terminate_listener(db_dsn) == 1
    during()
    await eventually(lambda: service.reconnects > reconnects and service.connected,
                     "the listener to reconnect")


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_a_log_that_went_back_is_followed_from_its_new_end(
        db_dsn: str, party: Party, warnings: list[str]) -> None:
    event_id, track_id = event_with_track(db_dsn)
    delivered: Delivered = []
    service = _listener(db_dsn, delivered, backoff=lambda attempt: 0.5)
    service.listen("firehose")
    service.startService()
    try:
        await service.whenConnected()
        for _ in range(3):
            party.vote(event_id, track_id, up=False)
        await eventually(lambda: len(delivered) == 6, "the first changes")

        def restore_an_older_database() -> None:
            party.query("TRUNCATE partysense_change")
            party.query("ALTER SEQUENCE partysense_change_seq_seq RESTART")

        await _outage(service, db_dsn, restore_an_older_database)
        assert any("before seq 6 that the listener had already seen" in w for w in warnings)
        party.vote(event_id, track_id)  # seq 1 again: new, not a duplicate
        await eventually(lambda: len(delivered) == 7, "the change after the restore")
        assert delivered[-1][1] == 1
    finally:
        service.stopService()


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_a_log_trimmed_during_the_outage_is_reported(
        db_dsn: str, party: Party, warnings: list[str]) -> None:
    event_id, track_id = event_with_track(db_dsn)
    delivered: Delivered = []
    service = _listener(db_dsn, delivered, backoff=lambda attempt: 0.5)
    service.listen("firehose")
    service.startService()
    try:
        await service.whenConnected()
        party.vote(event_id, track_id)
        await eventually(lambda: len(delivered) == 1, "a first change")

        def another_daemon_trims() -> None:
            for _ in range(3):
                party.vote(event_id, track_id)
            party.query("DELETE FROM partysense_change "
                        "WHERE seq < (SELECT max(seq) FROM partysense_change)")

        await _outage(service, db_dsn, another_daemon_trims)
        assert any("may have been trimmed" in w for w in warnings), warnings
        assert [seq for _, seq, _ in delivered] == [1, 4]  # what the log still had
    finally:
        service.stopService()


# -- deadlines that fire late -----------------------------------------------------


class _DroppableConnection:
    def __init__(self) -> None:
        self.dropped: list[str] = []

    def drop(self, why: str) -> None:
        self.dropped.append(why)


def fire_late(clock: task.Clock) -> None:
    """Run the due timer the way a reactor does: calls it schedules wait a round.

    (``Clock.advance`` would also run the ``callLater(0)`` the timer makes,
    which a real reactor only runs after its next I/O poll.)
    """
    (timer,) = clock.getDelayedCalls()
    clock.calls.remove(timer)
    timer.called = 1
    timer.func(*timer.args, **timer.kw)


@pytest.mark.logic
def test_a_deadline_waits_one_more_io_round_before_dropping() -> None:
    clock = task.Clock()
    connection = _DroppableConnection()
    answer: defer.Deferred[None] = defer.Deferred()
    before_deadline(clock, connection, answer, 4.0, "silent")
    clock.advance(3.9)
    fire_late(clock)  # the deadline's timer fires, late after a busy reactor...
    assert connection.dropped == []
    answer.callback(None)  # ...and the next I/O round reads the answer that waited
    clock.advance(0)
    assert connection.dropped == []
    assert clock.getDelayedCalls() == []


@pytest.mark.logic
def test_a_deadline_drops_a_connection_that_really_is_silent() -> None:
    clock = task.Clock()
    connection = _DroppableConnection()
    answer: defer.Deferred[None] = defer.Deferred()
    before_deadline(clock, connection, answer, 4.0, "silent")
    clock.advance(4.0)
    clock.advance(0)
    assert connection.dropped == ["silent"]


# -- the grace: work waits for a connection that is on its way -----------------------


@pytest.mark.logic
def test_within_the_grace_work_waits_for_the_connection_and_past_it_fails() -> None:
    clock = task.Clock()
    service = QueryService(no_database, clock, grace=10.0, backoff=lambda attempt: 1.0)
    service.startService()
    try:
        waiting = service.whenAvailable()
        query = service.runQuery("SELECT 1")
        assert not waiting.called and not query.called  # held, not refused
        assert service.waiting == 1
        clock.advance(9.9)
        assert not waiting.called
        clock.advance(0.2)  # the grace is over, still no database
        failures: list[Any] = []
        waiting.addErrback(failures.append)
        query.addErrback(failures.append)
        assert [f.type for f in failures] == [NotConnected, NotConnected]
        assert service.waiting == 0
        late = service.whenAvailable()  # past the grace: at once
        late.addErrback(failures.append)
        assert failures[-1].type is NotConnected
    finally:
        service.stopService()


@pytest.mark.logic
def test_without_a_grace_work_is_refused_at_once() -> None:
    clock = task.Clock()
    service = ListenerService(no_database, clock)  # grace 0: the services' default
    service.startService()
    try:
        failures: list[Any] = []
        service.whenListening("event_1").addErrback(failures.append)
        assert failures and failures[0].type is NotConnected
    finally:
        service.stopService()
