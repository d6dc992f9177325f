"""Idle sockets do not lock out new guests: the daemon counts connections from
accept (partysense/wire/waiting.py), under a small open-files limit.

127.0.0.2 … 127.0.0.6 are all loopback on Linux: each client socket is bound
to one of them, so the daemon sees five addresses.
"""

from __future__ import annotations

import json
import resource
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.daemon import Daemon, wait_for
from harness.faults import wait_subscribed
from partysense.dialects.v2 import SUBPROTOCOL
from tests.rawws import open_raw, read_frame, send_text
from tests.support import Party
from tests.test_metrics import scrape, value
from tests.test_tls import https_health, self_signed

ATTACKERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
GUEST = "127.0.0.6"
DAEMON_OPEN_FILES = 4096
# 4,400 idle sockets in all: past the daemon's open-files limit, within each
# address's --max-connections-per-ip (1,024) but for the last few.
PER_ATTACKER = 1100
# What the guest is promised while the attack goes on.
PROMPTLY = 2.0


@pytest.fixture
def many_open_files() -> Iterator[None]:
    """This process holds the attackers' sockets: its own limit must allow them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = len(ATTACKERS) * PER_ATTACKER + 1024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard open-files limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect_from(source: str, port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def accept_queue(port: int) -> int | None:
    """Connections the kernel holds for the daemon's listening socket, not yet
    accepted (rx_queue of its LISTEN line in /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":
                return int(fields[4].split(":")[1], 16)
    return None


def healthz_from(source: str, port: int, timeout: float) -> bytes:
    with connect_from(source, port, timeout) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.daemon
def test_idle_sockets_from_four_addresses_leave_room_for_a_fifth(
        db_dsn: str, tmp_path: Path, party: Party, many_open_files: None) -> None:
    """4,400 idle sockets against `ulimit -n 4096`: the fifth address still gets
    /healthz 200 and a subscription that receives a vote, each within 2 s.
    Before, the idle sockets took every file: /healthz got an empty reply
    ("EMFILE recovery" in the log) and the balancer dropped the daemon."""
    event_id, track_id = party.event("Crowded"), party.track()
    attack: list[socket.socket] = []
    # A long handshake deadline: the sockets stay for the whole test, however slow the machine.
    with Daemon(db_dsn, tmp_path, "--handshake-timeout", "300",
                open_files=DAEMON_OPEN_FILES) as daemon:
        try:
            for source in ATTACKERS:
                attack += [connect_from(source, daemon.port) for _ in range(PER_ATTACKER)]
            wait_for(lambda: accept_queue(daemon.port) == 0, 60,
                     "the daemon to accept every connection")

            answer = healthz_from(GUEST, daemon.port, timeout=PROMPTLY)
            assert answer.startswith(b"HTTP/1.1 200 "), answer

            guest = open_raw(daemon.port, SUBPROTOCOL, source=GUEST, timeout=PROMPTLY)
            with guest:
                send_text(guest, json.dumps({"type": "subscribe", "event": event_id, "id": "a"}))
                guest.settimeout(15)  # the snapshot waits for the database: not the promise
                assert json.loads(read_frame(guest)[1])["type"] == "snapshot"
                wait_subscribed(daemon, {f"event_{event_id}"})
                guest.settimeout(PROMPTLY)
                voted = time.monotonic()
                party.vote(event_id, track_id)
                change = json.loads(read_frame(guest)[1])
                assert change["type"] == "change" and change["tid"] == track_id
                assert time.monotonic() - voted < PROMPTLY
            assert "EMFILE" not in daemon.log()
            assert "for a newcomer" in daemon.log()  # the oldest idle ones were closed, said once
            metrics = scrape(daemon)
            budget = value(metrics, "partysense_connections_waiting_limit")
            assert budget == (DAEMON_OPEN_FILES - 64) // 8  # docs/operations.md's table: 504
            assert value(metrics, "partysense_connections_waiting") <= budget
            assert value(metrics, "partysense_connections_refused_total",
                         reason="idle_closed") >= len(attack) - budget
        finally:
            for sock in attack:
                sock.close()


@pytest.mark.daemon
def test_connections_waiting_to_upgrade_count_with_websockets_per_address(
        db_dsn: str, tmp_path: Path) -> None:
    """--max-connections-per-ip 3: one WebSocket and two idle sockets from an
    address are its three; a fourth connection gets 429, another address is
    served. Before, the idle ones were not counted at all."""
    with Daemon(db_dsn, tmp_path, "--max-connections-per-ip", "3") as daemon:
        websocket = open_raw(daemon.port, source="127.0.0.2")
        idle = [connect_from("127.0.0.2", daemon.port) for _ in range(2)]
        try:
            # Said before the request is read: this one sends none, so nothing
            # unread meets the close (which would be a reset, not the answer).
            with connect_from("127.0.0.2", daemon.port) as refused:
                answer = refused.recv(4096)
            assert answer.startswith(b"HTTP/1.1 429 Too Many Requests"), answer
            open_raw(daemon.port, source="127.0.0.3").close()
            # One idle socket closes: once the daemon has seen it, there is room again.
            idle.pop().close()

            def upgraded() -> bool:
                try:
                    open_raw(daemon.port, source="127.0.0.2").close()
                except ConnectionError:
                    return False
                return True
            wait_for(upgraded, 15, "room for a WebSocket from 127.0.0.2")
        finally:
            websocket.close()
            for sock in idle:
                sock.close()


def https_healthz_from(source: str, port: int, trust: ssl.SSLContext, timeout: float) -> bytes:
    with trust.wrap_socket(connect_from(source, port, timeout),
                           server_hostname="127.0.0.1") as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.daemon
def test_on_a_tls_port_idle_sockets_closed_for_newcomers_free_their_files(
        db_dsn: str, tmp_path: Path, many_open_files: None) -> None:
    """On an ssl: port an idle socket never finishes (never starts) its TLS
    handshake: what is written to it waits for the handshake, so closing it
    "politely" would keep its file for ever. Under `ulimit -n 1024`, 1,200 of
    them, and the fifth address still gets /healthz over TLS."""
    key, cert = self_signed(tmp_path)
    daemon = Daemon(db_dsn, tmp_path, "--handshake-timeout", "300", admin=False,
                    open_files=1024)
    daemon.extra += ["--port", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"]
    trust = ssl.create_default_context(cafile=str(cert))
    attack: list[socket.socket] = []
    daemon.start(wait=False)
    try:
        wait_for(lambda: https_health(daemon, trust) == 200, 30, "the daemon to answer on TLS")
        for source in ATTACKERS:
            attack += [connect_from(source, daemon.port) for _ in range(300)]
        wait_for(lambda: accept_queue(daemon.port) == 0, 60,
                 "the daemon to accept every connection")
        answer = https_healthz_from(GUEST, daemon.port, trust, timeout=PROMPTLY)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert daemon.process is not None
        # The 120 that may wait (an eighth of 1,024 less 64), and the daemon's own files.
        assert psutil.Process(daemon.process.pid).num_fds() < 120 + 64
        assert "EMFILE" not in daemon.log()
    finally:
        for sock in attack:
            sock.close()
        daemon.stop()
