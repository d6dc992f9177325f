"""A thousand and more hostile inputs; a polite client is served throughout."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from harness.daemon import Daemon
from tests.rawws import frame, open_raw
from tests.support import Party

pytestmark = pytest.mark.daemon

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8,
)
requests = st.one_of(
    json_values,
    st.fixed_dictionaries({"event": json_values}),
    st.fixed_dictionaries({"type": st.sampled_from(["subscribe", "unsubscribe", "ping", "x"]),
                           "event": json_values}, optional={"cursor": json_values,
                                                            "id": json_values}),
).map(json.dumps)

frames = st.one_of(
    requests.map(lambda text: frame(text.encode("utf-8"))),               # odd JSON
    st.text(max_size=200).map(lambda text: frame(text.encode("utf-8"))),  # any text
    st.binary(max_size=200).map(lambda data: frame(data, opcode=2)),      # binary
    st.binary(max_size=64).map(lambda data: frame(data, opcode=1)),       # bad UTF-8
    st.tuples(st.binary(max_size=64), st.integers(0, 15), st.booleans(), st.booleans(),
              st.integers(0, 7)).map(lambda t: frame(t[0], opcode=t[1], fin=t[2], mask=t[3],
                                                     rsv=t[4])),           # bad framing
    st.binary(min_size=1, max_size=300),                                   # noise
    st.integers(5000, 70000).map(lambda n: frame(b"x" * n)),               # too big
)
handshakes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([
        b"GET / HTTP/1.1", b"GET /healthz HTTP/1.0", b"POST / HTTP/1.1", b"Host: x",
        b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Version: 99", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Key: ???", b"Sec-WebSocket-Protocol: partysense.v2",
        b"Sec-WebSocket-Extensions: permessage-deflate", b"Origin: null",
        b"Content-Length: 99999999", b"\xff\xfe", b"",
    ]), max_size=10).map(lambda lines: b"\r\n".join(lines) + b"\r\n\r\n"),
)
inputs = st.one_of(
    st.tuples(st.just("frames"), st.sampled_from([None, "partysense.v2"]),
              st.lists(frames, min_size=1, max_size=4)),
    st.tuples(st.just("handshake"), st.none(), handshakes.map(lambda h: [h])),
)


def refused(daemon: Daemon) -> dict[str, float]:
    """partysense_bad_inputs_total by kind, from /metrics."""
    from tests.test_metrics import scrape

    return {dict(labels)["kind"]: value for (name, labels), value in scrape(daemon).items()
            if name == "partysense_bad_inputs_total"}


def send_hostile(port: int, kind: str, subprotocol: str | None, chunks: list[bytes]) -> None:
    try:
        if kind == "frames":
            sock = open_raw(port, subprotocol=subprotocol, timeout=5)
        else:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        with sock:
            for chunk in chunks:
                sock.sendall(chunk)
            sock.settimeout(0.05)
            try:
                sock.recv(65536)
            except OSError:
                pass
    except OSError:
        pass  # the daemon may hang up on us at any point: that is its right


def test_fuzzed_frames_and_handshakes_do_not_disturb_a_good_client(
        db_dsn: str, tmp_path, party: Party) -> None:
    event_id = party.event()
    track = party.track()
    sent = [0]
    with Daemon(db_dsn, tmp_path, "--max-messages-per-second", "1000") as daemon, \
            connect(daemon.ws_url, open_timeout=10) as good:
        good.send(json.dumps({"event": event_id}))

        def still_served() -> None:
            vote = party.vote(event_id, track)
            message = json.loads(good.recv(timeout=10))
            assert message["vote"] == vote

        @settings(max_examples=1100, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(inputs)
        def hostile(case: tuple) -> None:
            send_hostile(daemon.port, *case)
            sent[0] += 1
            if sent[0] % 100 == 0:
                still_served()

        hostile()
        still_served()
        assert sent[0] >= 1000
        assert daemon.health()[0] == 200
        counted = refused(daemon)
    log = daemon.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    # The inputs did reach the protocol: many clients were refused, each counted...
    assert sum(counted.values()) > 200
    # ...and logged at a bounded rate: from one address, a line per 10 s at most
    # (each saying how many more were held back).
    assert 1 <= log.count("Closing tcp4:") <= 12
