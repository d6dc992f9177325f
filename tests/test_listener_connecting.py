"""The listener's connecting logic: backoff, stopping, connect deadlines,
whenConnected, host resolution, and the grace work waits out.

Timing logic runs on Twisted's ``Clock``/``MemoryReactorClock`` (with a real
socket that never answers where a connection is needed). The listener against
a real PostgreSQL is in tests/test_listener_postgres.py, late deadlines in
tests/test_listener_deadlines.py.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock

from partysense.db.listener import ListenerService
from partysense.db.pgservice import NotConnected, PostgresService, default_backoff
from partysense.db.queries import QueryService
from partysense.db.txpostgres_adapter import needs_resolving, with_resolved_host
from tests.support import eventually


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
