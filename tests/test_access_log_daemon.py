"""The access log against the daemon, read from the log file twistd writes: no token
in it however it was spelled, a bounded number of lines per address (Autobahn's
included), one line per WebSocket and SSE connection when it ends."""

from __future__ import annotations

import json
import re
import secrets
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from tests.sse import Stream
from tests.support import Party

pytestmark = pytest.mark.daemon

BURST = 30          # partysense/wire/accesslog.py: lines per address per 10 s
AUTOBAHN_BURST = 3  # partysense/wire/protocol.py: Autobahn's lines per address per 10 s
ACCESS = "[partysense.access#info]"
SUMMARY = re.compile(r"(\d+) access log lines about 127\.0\.0\.1 not logged .*?: (.*)$", re.M)


def get(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def lines_with(daemon: Daemon, text: str) -> list[str]:
    return [line for line in daemon.log().splitlines() if text in line]


# -- against the daemon ---------------------------------------------------------------

def test_tokens_are_hidden_however_spelled_and_in_the_referer(db_dsn: str, tmp_path: Path,
                                                               party: Party) -> None:
    event_id = party.event("Hidden")
    # Printable: the daemon strips whitespace around a file's secret, and random bytes
    # end in a space or newline about one run in twenty.
    secret = secrets.token_urlsafe(32).encode("ascii")
    (tmp_path / "secret").write_bytes(secret)
    token = jwt.encode({"exp": int(time.time()) + 600, "events": [event_id]}, secret,
                       algorithm="HS256")
    with Daemon(db_dsn, tmp_path, "--token-secret-file", str(tmp_path / "secret")) as daemon:
        # Percent-encoded, the name is still the token: the stream is let in...
        stream = Stream(daemon.port, f"/events/{event_id}/stream?%74oken={token}")
        assert stream.status == 200
        stream.close()
        with connect(f"{daemon.ws_url}/?a=1&%74oken={token}",
                     subprotocols=["partysense.v2"]) as websocket:  # type: ignore[list-item]
            websocket.send(json.dumps({"type": "subscribe", "event": event_id}))
            assert '"snapshot"' in websocket.recv(timeout=30)
        assert get(f"{daemon.url}/?x=1;TOKEN={token}") == 200
        assert get(f"{daemon.url}/", {"Referer": f"https://page.example/?token={token}"}) == 200
        # ...and the log has their lines, none with the token.
        wait_for(lambda: "page.example" in daemon.log(), 30, "the request lines")
    log = daemon.log()
    assert token not in log
    assert "/?x=1;TOKEN=***" in log and '"https://page.example/?token=***"' in log
    assert f"/events/{event_id}/stream?%74oken=***" in log and "/?a=1&%74oken=***" in log


def test_access_lines_are_bounded_per_address_with_a_count_of_the_rest(daemon: Daemon) -> None:
    requests = 200
    started = time.monotonic()
    for _ in range(requests):  # a new connection each: reconnecting resets nothing
        assert get(f"{daemon.url}/static/style.css") == 200
    intervals = (time.monotonic() - started) // 10 + 1  # the budget is per 10 s

    def logged() -> list[str]:
        return [line for line in daemon.log().splitlines() if "/static/style.css" in line]
    wait_for(lambda: SUMMARY.search(daemon.log()) or len(logged()) == requests, 40,
             "the summary line")
    assert len(logged()) <= BURST * intervals < requests
    summaries = SUMMARY.findall(daemon.log())
    dropped = sum(int(count) for count, _ in summaries)
    assert len(logged()) + dropped == requests  # every request is in a line or a count
    assert all(kinds == f"200: {count}" for count, kinds in summaries)


def bad_handshake(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 99\r\n\r\n")
        answer = sock.recv(200)
        while sock.recv(4096):  # until the daemon closes it
            pass
    return answer


def test_autobahns_lines_for_bad_handshakes_are_bounded_per_address(daemon: Daemon) -> None:
    started = time.monotonic()
    for _ in range(100):
        assert bad_handshake(daemon.port).startswith(b"HTTP/1.1 400")
    intervals = (time.monotonic() - started) // 10 + 1
    counted = re.compile(r"(\d+) Autobahn lines about 127\.0\.0\.1 not logged")

    def autobahn() -> list[str]:
        return lines_with(daemon, "[autobahn.twisted.websocket.WebSocketServerProtocol#")
    wait_for(lambda: counted.search(daemon.log()) or len(autobahn()) == 200, 40,
             "Autobahn's summary line")
    assert len(autobahn()) <= AUTOBAHN_BURST * intervals < 200
    dropped = counted.findall(daemon.log())
    assert len(autobahn()) + sum(map(int, dropped)) == 200  # two lines per bad handshake


END_LINE = re.compile(r'(websocket|sse) "127\.0\.0\.1" "GET ([^"]*)" ended after ([\d.]+) s: '
                      r'sent (\d+) bytes, received (\d+) bytes, close (\S+) "(.*)"$', re.M)


def test_a_websocket_leaves_one_line_when_it_ends(daemon: Daemon, party: Party) -> None:
    event_id = party.event("Goodbye")
    with connect(f"{daemon.ws_url}/?token=not-needed") as websocket:
        websocket.send(json.dumps({"event": event_id}))
        wait_for(lambda: (daemon.health() or (0, {}))[1].get("channels"), 30, "the subscription")
        party.vote(event_id, party.track())
        assert websocket.recv(timeout=30)
        websocket.close(code=4000, reason="bye")
    ended = wait_for(lambda: END_LINE.findall(daemon.log()), 30, "the end-of-connection line")
    assert len(ended) == 1
    kind, path, duration, sent, received, code, reason = ended[0]
    assert (kind, path, code, reason) == ("websocket", "/?token=***", "4000", "bye")
    assert float(duration) > 0 and int(sent) > 100 and int(received) > 100  # handshakes


def test_an_sse_stream_leaves_one_line_when_it_ends(daemon: Daemon, party: Party) -> None:
    event_id = party.event("Goodbye")
    stream = Stream(daemon.port, f"/events/{event_id}/stream")
    party.vote(event_id, party.track())
    wait_for(stream.changes, 30, "the vote")
    stream.close()
    ended = wait_for(lambda: END_LINE.findall(daemon.log()), 30, "the end-of-connection line")
    assert len(ended) == 1
    kind, path, duration, sent, received, code, reason = ended[0]
    assert (kind, path, code, reason) == ("sse", f"/events/{event_id}/stream", "200",
                                          "the client went away")
    assert float(duration) > 0 and int(sent) > 100 and int(received) > 20
    # One line for the stream: not a request line as well.
    assert [line for line in lines_with(daemon, ACCESS) if "/stream" in line] == [
        line for line in lines_with(daemon, ACCESS) if line.endswith('"the client went away"')]
