"""What a stranger can make the HTTP side do is bounded (partysense/web/httpguard.py)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from harness.daemon import Daemon, wait_for
from partysense.web.httpguard import GuardedSite


def request(port: int, raw: bytes, timeout: float = 10) -> bytes:
    """Send ``raw``, read until the daemon closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.daemon
def test_a_trickling_client_is_closed_at_the_handshake_deadline(
        db_dsn: str, tmp_path: Path) -> None:
    """Slowloris: a header byte every half second kept Twisted's idle timer alive for ever."""
    with Daemon(db_dsn, tmp_path, "--handshake-timeout", "2") as daemon:
        socks = [socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
                 for _ in range(20)]
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.1\r\n")
        open_socks = set(socks)
        deadline = time.monotonic() + 10
        while open_socks and time.monotonic() < deadline:
            for sock in list(open_socks):
                try:
                    sock.sendall(b"X")  # one more byte of a header that never ends
                except OSError:
                    open_socks.discard(sock)  # reset: closed by the daemon
            time.sleep(0.5)  # the attack's own pace, not a wait for the daemon
        for sock in socks:
            sock.close()
        assert not open_socks, f"{len(open_socks)} trickling connections still open after 10 s"
        wait_for(lambda: "no WebSocket upgrade within 2 s" in daemon.log(), 10, "the log line")
        # A flood of them is one log line per 10 s, not twenty.
        assert daemon.log().count("no WebSocket upgrade") == 1


@pytest.mark.daemon
@pytest.mark.parametrize("headers", [
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
    b"POST /api/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_a_request_with_a_body_gets_413_before_the_body_is_read(
        daemon: Daemon, headers: bytes) -> None:
    answer = request(daemon.port, headers + b"x" * 65536)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert daemon.health()[0] == 200  # and the daemon is fine


@pytest.mark.daemon
def test_only_get_and_head(daemon: Daemon) -> None:
    assert request(daemon.port, b"DELETE / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 405 ")
    assert request(daemon.port, b"OPTIONS /healthz HTTP/1.0\r\n\r\n").startswith(
        b"HTTP/1.0 405 ")
    head = request(daemon.port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and head.endswith(b"\r\n\r\n")


@pytest.mark.daemon
def test_metrics_answer_only_their_exact_path(db_dsn: str, tmp_path: Path) -> None:
    with Daemon(db_dsn, tmp_path, admin=False) as daemon:  # /metrics on the public port
        for path in (b"/metrics/", b"/metrics/x", b"/%6Detrics", b"/metrics%2F"):
            assert request(daemon.port, b"GET " + path + b" HTTP/1.0\r\n\r\n").startswith(
                b"HTTP/1.0 404 "), path
        assert request(daemon.port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(
            b"HTTP/1.0 200 ")


@pytest.mark.daemon
def test_the_public_port_says_ok_or_not_and_the_admin_port_says_why(daemon: Daemon) -> None:
    public = request(daemon.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert public.startswith(b"HTTP/1.0 200 ")
    assert json.loads(public.split(b"\r\n\r\n", 1)[1]) == {"status": "ok"}
    # With --admin-port, /metrics is there only.
    assert request(daemon.port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404 ")
    admin = request(daemon.admin_port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert admin.startswith(b"HTTP/1.0 200 ") and b"partysense_listener_up 1.0" in admin
    status, detailed = daemon.health()  # the admin port's
    assert status == 200 and {"listener", "queries", "reason", "channels", "clients",
                              "pid"} <= detailed.keys()


@pytest.mark.logic
def test_connections_waiting_to_upgrade_leave_the_books_at_their_deadline() -> None:
    clock = Clock()
    site = GuardedSite(Resource(), clock, handshake_timeout=10.0)
    address = IPv4Address("TCP", "192.0.2.1", 1000)
    for _ in range(3):
        site.buildProtocol(address).makeConnection(StringTransport())
    assert len(site.waiting) == 3
    clock.advance(10.0)  # their deadlines passed
    assert len(site.waiting) == 0 and not clock.getDelayedCalls()  # nothing kept


@pytest.mark.daemon
def test_a_healthy_healthz_stays_out_of_the_access_log(daemon: Daemon) -> None:
    """A balancer's health checks would fill the log; failing ones and the rest still show."""
    for _ in range(3):
        answer = request(daemon.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.0 200")
    request(daemon.port, b"GET /no-such-page HTTP/1.0\r\n\r\n")
    wait_for(lambda: '"GET /no-such-page HTTP/1.0" 404' in daemon.log(), 10,
             "the 404 in the access log")
    assert '"GET /healthz HTTP/1.0"' not in daemon.log()
