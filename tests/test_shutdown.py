"""SIGTERM: every client hears 1001, the database connection closes, twistd exits in 5 s.

Against a real twistd, with polite clients of both dialects and rude ones:
raw sockets that completed the WebSocket handshake and then ignore
everything (they never read, so they never answer the close frame), and a
TCP connection that never even sent its handshake.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from harness.daemon import Daemon, wait_for
from harness.faults import listener_backends, wait_subscribed
from tests.rawws import open_raw, send_text
from tests.support import Party

EXIT_WITHIN = 5.0  # seconds from SIGTERM to exit, whatever the clients do


class Polite:
    """A client that reads everything and answers the close handshake."""

    def __init__(self, daemon: Daemon, request: dict[str, Any], v2: bool = False) -> None:
        self.websocket: ClientConnection = connect(
            daemon.ws_url, open_timeout=10, close_timeout=5,
            subprotocols=["partysense.v2"] if v2 else None)  # type: ignore[list-item]
        self.websocket.send(json.dumps(request))
        self.close_code: int | None = None
        self.close_reason = ""
        self.frames = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                self.websocket.recv()
                self.frames += 1
        except ConnectionClosed as closed:
            if closed.rcvd is not None:
                self.close_code, self.close_reason = closed.rcvd.code, closed.rcvd.reason

    def join(self) -> None:
        self._thread.join(10)


@pytest.mark.daemon
def test_sigterm_closes_everybody_and_exits_in_time(db_dsn: str, party: Party,
                                                    tmp_path: Path) -> None:
    event_id = party.event("Last dance")
    track_id = party.track()
    daemon = Daemon(db_dsn, tmp_path, "--no-demo").start()
    pidfile = daemon.pid_path
    assert pidfile.exists()
    rude: list[socket.socket] = []
    try:
        polite = [Polite(daemon, {"event": event_id}), Polite(daemon, {"event": "ALL"}),
                  Polite(daemon, {"type": "subscribe", "event": event_id}, v2=True)]
        for _ in range(3):  # handshake done, then deaf: never read, never answer
            sock = open_raw(daemon.port, rcvbuf=4096)
            send_text(sock, json.dumps({"event": "ALL"}))
            rude.append(sock)
        half_open = socket.create_connection(("127.0.0.1", daemon.port))  # says nothing
        rude.append(half_open)
        wait_subscribed(daemon, {f"event_{event_id}", "firehose"})
        wait_for(lambda: daemon.health()[1]["clients"] == 6, 10, "every client to be counted")
        party.vote(event_id, track_id, up=False)
        wait_for(lambda: all(client.frames >= 2 for client in polite[:2]), 10,
                 "votes to reach the polite clients")
        assert listener_backends(db_dsn) == 1

        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        try:  # the deadline is the promise: out within EXIT_WITHIN, deaf clients or not
            code = daemon.process.wait(EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"twistd still running {EXIT_WITHIN} s after SIGTERM:\n"
                                 f"{daemon.log()[-3000:]}") from None
        # Twisted ends by re-raising the signal that stopped it, as a shell expects.
        assert code in (0, -signal.SIGTERM), daemon.log()

        for client in polite:
            client.join()
            assert (client.close_code, client.close_reason) == (1001, "server shutting down")
        assert not pidfile.exists(), "twistd left its pidfile behind"
        wait_for(lambda: listener_backends(db_dsn) == 0, 5,
                 "the listener's connection to leave pg_stat_activity")
        log = daemon.log()
        assert "Listener stopped; its PostgreSQL connection is closed." in log
        assert "Traceback" not in log and "Unhandled" not in log, log
    finally:
        for sock in rude:
            sock.close()
        daemon.stop()


# -- the closing logic, on a Clock ------------------------------------------------


class _Client:
    """Stands in for a LiveProtocol: may refuse to close, may never go away."""

    def __init__(self, clients: set[Any], fails: bool = False, answers: bool = True) -> None:
        self._clients = clients
        self._fails = fails
        self._answers = answers
        self.closed_with: tuple[int, str] | None = None
        self.dropped = False
        clients.add(self)

    def close_with(self, code: int, reason: str) -> None:
        if self._fails:
            raise RuntimeError("transport already gone")
        self.closed_with = (code, reason)
        if self._answers:
            self._clients.discard(self)

    def abort(self) -> None:
        self.dropped = True
        if self._fails:
            raise RuntimeError("transport already gone")


@pytest.mark.logic
def test_stopping_waits_for_answers_drops_the_deaf_and_survives_failures() -> None:
    from types import SimpleNamespace

    from twisted.internet import task

    from partysense.tap import ClientsService

    clock = task.Clock()
    logs_stopped: list[bool] = []
    factory: Any = SimpleNamespace(clients=set(), stop_logs=lambda: logs_stopped.append(True))
    broken = _Client(factory.clients, fails=True)
    polite = _Client(factory.clients)
    deaf = _Client(factory.clients, answers=False)
    service = ClientsService(factory, clock, grace=2.0)
    service.startService()
    stopped = service.stopService()
    assert polite.closed_with == deaf.closed_with == (1001, "server shutting down")
    assert not stopped.called
    clock.advance(1.9)
    assert not stopped.called and not deaf.dropped
    clock.advance(0.2)
    assert stopped.called, "the grace period ends even when a client cannot be closed"
    assert deaf.dropped and broken.dropped
    assert logs_stopped == [True]  # the held-back log counts said, no summary timer left
    assert clock.getDelayedCalls() == []


@pytest.mark.daemon
def test_systemd_hears_ready_once_serving_and_stopping_at_shutdown(
        db_dsn: str, tmp_path: Path) -> None:
    """Type=notify: READY=1 once the port listens and the database is connected."""
    address = str(tmp_path / "notify.sock")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(address)
    systemd.settimeout(0.1)
    heard: list[str] = []

    def listen() -> list[str]:
        try:
            heard.append(systemd.recv(4096).decode())
        except TimeoutError:
            pass
        return heard

    env = dict(os.environ, NOTIFY_SOCKET=address)
    daemon = Daemon(db_dsn, tmp_path, env=env).start()
    try:
        wait_for(lambda: any("READY=1" in h for h in listen()), 15, "READY=1")
        assert daemon.health()[0] == 200
    finally:
        daemon.stop()
    wait_for(lambda: any("STOPPING=1" in h for h in listen()), 15, "STOPPING=1")
    systemd.close()
