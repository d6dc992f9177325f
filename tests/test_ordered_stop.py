"""Shutdown goes in one order: clients hear 1001, then the ports close, then the
database connections, then the embedded PostgreSQL (partysense/process/ordered.py)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.application import service
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from partysense.process.ordered import InOrder


class Recorded(service.Service):
    """Notes when it is told to stop; its stop finishes when the test says so."""

    def __init__(self, name: str, stops: list[str], fails: bool = False) -> None:
        self.setName(name)
        self._stops = stops
        self._fails = fails
        self.finish: defer.Deferred[None] = defer.Deferred()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stops.append(self.name)
        if self._fails:
            raise RuntimeError("cannot stop")
        return self.finish


@pytest.mark.logic
def test_children_stop_one_at_a_time_last_added_first() -> None:
    stops: list[str] = []
    top = InOrder()
    database, port, clients = (Recorded(name, stops) for name in ("database", "port", "clients"))
    broken = Recorded("broken", stops, fails=True)
    for child in (database, port, broken, clients):
        child.setServiceParent(top)
    top.startService()
    stopped = top.stopService()
    assert stops == ["clients"], "the next waits until the clients' goodbye is over"
    clients.finish.callback(None)
    assert stops == ["clients", "broken", "port"], "a failing stop does not hold the rest"
    port.finish.callback(None)
    assert stops == ["clients", "broken", "port", "database"] and not stopped.called
    database.finish.callback(None)
    assert stopped.called and not top.running


def _tree(*arguments: str) -> Any:
    from partysense.tap import Options, makeService

    options = Options()
    options.parseOptions(list(arguments))
    return makeService(options, reactor=MemoryReactorClock())


@pytest.mark.logic
def test_the_daemon_says_goodbye_before_closing_ports_and_databases() -> None:
    top = _tree("--dsn", "postgresql://nobody@127.0.0.1:1/nothing",
                "--admin-port", "tcp:0:interface=127.0.0.1", "--demo")
    assert isinstance(top, InOrder)
    stop_order = [type(child).__name__ for child in reversed(list(top))]
    assert stop_order == [
        # PresenceService before the query connection: a clean stop takes its rows out.
        "SystemdNotifier", "DemoPartyService", "ClientsService",
        "StreamServerEndpointService", "Rates", "StreamServerEndpointService",
        "QueueUsagePoller", "EventDirectory", "PresenceService", "RetentionService",
        "QueryService", "ListenerService", "CollectorService"]


@pytest.mark.logic
def test_the_embedded_database_stops_after_everything_that_uses_it(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARTYSENSE_DSN", raising=False)
    single = _tree("--data-dir", str(tmp_path / "pgdata"))
    stop_order = [type(child).__name__ for child in reversed(list(single))]
    assert stop_order[:3] == ["SystemdNotifier", "DemoPartyService", "ClientsService"]
    assert stop_order[-4:] == ["QueryService", "ListenerService", "EmbeddedPostgresService",
                               "CollectorService"]
    supervisor = _tree("--data-dir", str(tmp_path / "pgdata"), "--workers", "2")
    assert isinstance(supervisor, InOrder)
    assert [type(child).__name__ for child in reversed(list(supervisor))] == [
        "DemoPartyService", "WorkersService", "EmbeddedPostgresService"]
