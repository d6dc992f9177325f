"""Per-client limits of a real daemon: clients, subscriptions, rate, Origins, timeouts."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from tests.rawws import open_raw
from tests.support import Party

pytestmark = pytest.mark.daemon


def closed_with(client, timeout: float = 10) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            client.recv(timeout=timeout)
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_the_client_past_max_clients_gets_1013(db_dsn: str, tmp_path: Path) -> None:
    with Daemon(db_dsn, tmp_path, "--max-clients", "3") as daemon:
        clients = [connect(daemon.ws_url, open_timeout=10) for _ in range(3)]
        wait_for(lambda: daemon.health()[1]["clients"] == 3, 10, "three clients")
        with connect(daemon.ws_url, open_timeout=10) as extra:
            code, reason = closed_with(extra)
        assert code == 1013 and "full" in reason
        assert daemon.health()[1]["clients"] == 3
        for client in clients:
            client.close()


def test_subscriptions_per_connection_are_limited(db_dsn: str, tmp_path: Path,
                                                  party: Party) -> None:
    events = [party.event(f"E{i}") for i in range(3)]
    with Daemon(db_dsn, tmp_path, "--max-subscriptions", "2") as daemon, \
            connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as client:
        for event_id in events:
            client.send(json.dumps({"type": "subscribe", "event": event_id}))
        answers = [json.loads(client.recv(timeout=10)) for _ in events]
        assert [a["type"] for a in answers] == ["snapshot", "snapshot", "error"]
        assert answers[2]["error"] == "too_many_subscriptions"


def test_a_flood_of_messages_is_closed_with_4029(db_dsn: str, tmp_path: Path,
                                                 party: Party) -> None:
    event_id = party.event()
    with Daemon(db_dsn, tmp_path, "--max-messages-per-second", "5") as daemon:
        with connect(daemon.ws_url, open_timeout=10) as polite:
            polite.send(json.dumps({"event": event_id}))
            with connect(daemon.ws_url, open_timeout=10) as flood:
                for _ in range(50):
                    try:
                        flood.send(json.dumps({"event": event_id}))
                    except ConnectionClosed:
                        break
                code, _ = closed_with(flood)
            assert code == 4029
            party.vote(event_id, party.track())
            assert json.loads(polite.recv(timeout=10))["eid"] == event_id


def test_only_allowed_origins_may_connect(db_dsn: str, tmp_path: Path) -> None:
    with Daemon(db_dsn, tmp_path, "--allowed-origins", "https://party.example") as daemon:
        with connect(daemon.ws_url, origin="https://party.example", open_timeout=10) as ok:
            ok.send(json.dumps({"event": "ALL"}))
            wait_for(lambda: daemon.health()[1]["channels"] == ["firehose"], 10, "subscribe")
        # Refused with a close code and a reason a page's script can read (a
        # failed handshake tells a browser nothing): see test_refused_origin_*.
        with connect(daemon.ws_url, origin="https://evil.example", open_timeout=10) as evil:
            code, reason = closed_with(evil)
        assert code == 4403 and reason.startswith("origin_not_allowed")
        # Phones' native apps send no Origin at all: Origins only guard browsers.
        with connect(daemon.ws_url, open_timeout=10) as app:
            app.send(json.dumps({"event": "ALL"}))
    assert "https://party.example:443" in daemon.log()


def test_any_origin_means_null_too(db_dsn: str, tmp_path: Path) -> None:
    """The seed's example page opened from a file (Origin: null) works without --allowed-origins."""
    with Daemon(db_dsn, tmp_path) as daemon:
        with connect(daemon.ws_url, origin="null", open_timeout=10) as page:
            page.send(json.dumps({"event": "ALL"}))
            wait_for(lambda: daemon.health()[1]["channels"] == ["firehose"], 10, "subscribe")
    with Daemon(db_dsn, tmp_path, "--allowed-origins", "https://party.example") as daemon:
        with connect(daemon.ws_url, origin="null", open_timeout=10) as page:
            assert closed_with(page)[0] == 4403


def test_refused_origin_hears_4403_and_why_and_costs_no_session(
        db_dsn: str, tmp_path: Path) -> None:
    """A browser refused for its Origin: the handshake is accepted (with the
    subprotocol it asked for, or the browser would fail it and say nothing) and
    closed at once with 4403 and ``origin_not_allowed``; logged, counted by kind,
    never counted as a client, and nothing it sends is read."""
    from tests.test_fuzz import refused

    with Daemon(db_dsn, tmp_path, "--allowed-origins", "https://party.example") as daemon:
        for subprotocols in (None, ["partysense.v2"]):
            with connect(daemon.ws_url, origin="http://localhost:8000", open_timeout=10,
                         subprotocols=subprotocols) as page:
                assert page.subprotocol == (subprotocols[0] if subprotocols else None)
                try:
                    page.send(json.dumps({"type": "subscribe", "event": "ALL"}))
                except ConnectionClosed:
                    pass  # already closed: nothing to read
                code, reason = closed_with(page)
            assert code == 4403
            assert reason == ("origin_not_allowed: pages of http://localhost:8000 "
                              "may not connect here")
        wait_for(lambda: refused(daemon).get("origin_not_allowed") == 2, 10, "two refusals counted")
        assert daemon.health()[1]["clients"] == 0
        assert daemon.health()[1]["channels"] == []  # the subscribe was never read
        assert "origin_not_allowed, code 4403" in daemon.log()


def test_clients_that_ignore_pings_are_dropped(db_dsn: str, tmp_path: Path) -> None:
    with Daemon(db_dsn, tmp_path, "--ping-interval", "1") as daemon:
        dead = open_raw(daemon.port)  # completes the handshake, never answers a ping
        wait_for(lambda: daemon.health()[1]["clients"] == 1, 10, "the client to count")
        wait_for(lambda: daemon.health()[1]["clients"] == 0, 15, "the dead client to go")
        dead.close()


def test_an_unfinished_handshake_times_out(db_dsn: str, tmp_path: Path) -> None:
    with Daemon(db_dsn, tmp_path, "--handshake-timeout", "2") as daemon:
        sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=12)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        try:
            assert sock.recv(1024) == b""  # the server hung up...
        except TimeoutError:  # (a deadline, far below Twisted's own 60 s)
            raise AssertionError("the unfinished handshake was not timed out") from None
        finally:
            sock.close()
        # ...because the handshake timed out, not for another reason.
        wait_for(lambda: "no WebSocket upgrade within 2 s" in daemon.log(), 10,
                 "the timeout in the log")
