"""The pieces of partysense/web/sse.py without a daemon: the event bytes, parsing, keepalive."""

from __future__ import annotations

import json
import secrets
import time
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from partysense.core.change import parse_change
from partysense.core.hub import Delivery
from partysense.dialects.tokens import Tokens
from partysense.dialects.v2frames import change_json
from partysense.web.sse import Streams, chunk, sse_chunked_frame, sse_frame
from partysense.web.sserequest import Refused, allow_origin, answer, granted, last_event_id
from partysense.wire.origins import AllowedOrigins
from tests.test_change import RECORDED

pytestmark = pytest.mark.logic


def test_an_event_is_the_v2_change_on_one_line_encoded_once_per_change() -> None:
    delivery = Delivery("event_3", parse_change(RECORDED))
    event = delivery.frame("sse", sse_frame)
    # A track name with a newline and a tab: still one data line (JSON escapes them).
    assert event.count(b"\n") == 4 and event.endswith(b"\n\n")
    head, data = event.split(b"\ndata: ")
    assert head == b"id: 9007\nevent: change"
    assert json.loads(data) == {"type": "change", "sub": 3, **json.loads(RECORDED)}
    assert data.rstrip(b"\n") == change_json("event_3", delivery.change)
    chunked = delivery.frame("sse/chunked", sse_chunked_frame)
    assert chunked == b"%x\r\n" % len(event) + event + b"\r\n" == chunk(event)
    # Every stream of the channel gets the very same bytes.
    assert delivery.frame("sse/chunked", sse_chunked_frame) is chunked
    assert delivery.frame("sse", sse_frame) is event


def request(path: bytes = b"/events/1/stream", headers: dict[str, str] | None = None,
            args: dict[bytes, list[bytes]] | None = None) -> Any:
    dummy = DummyRequest(path.split(b"/")[1:])
    for name, value in (headers or {}).items():
        dummy.requestHeaders.setRawHeaders(name, [value])
    dummy.args = args or {}
    # The token is read from the raw target, as twisted.web hands it over
    # (partysense/wire/querytoken.py), so the target carries the arguments too.
    dummy.uri = path + (b"?" + urlencode(
        [(name, value) for name, values in dummy.args.items() for value in values]).encode()
        if dummy.args else b"")
    return dummy


@pytest.mark.parametrize(("headers", "args", "expected"), [
    ({}, {}, None),
    ({"Last-Event-ID": "1240"}, {}, 1240),
    ({}, {b"last_event_id": [b"77"]}, 77),
    # After a reconnect the browser's header is newer than the URL's first value.
    ({"Last-Event-ID": "1240"}, {b"last_event_id": [b"77"]}, 1240),
    ({"Last-Event-ID": ""}, {}, None),
    ({"Last-Event-ID": "9223372036854775807"}, {}, 2**63 - 1),
])
def test_where_a_stream_resumes(headers: dict[str, str], args: dict[bytes, list[bytes]],
                                expected: int | None) -> None:
    assert last_event_id(request(headers=headers, args=args)) == expected


@pytest.mark.parametrize("value", ["-1", "x", "1.5", "9223372036854775808", "１２", "1" * 20])
def test_a_last_event_id_that_is_not_a_seq_is_refused(value: str) -> None:
    with pytest.raises(Refused) as refused:
        last_event_id(request(headers={"Last-Event-ID": value}))
    assert (refused.value.status, refused.value.kind) == (400, "bad_last_event_id")


def test_origins_are_matched_as_the_websocket_matches_them() -> None:
    anyone = request(headers={"Origin": "https://overlay.example"})
    allow_origin(anyone, AllowedOrigins(()))
    assert anyone.responseHeaders.getRawHeaders("access-control-allow-origin") == ["*"]
    allowed = AllowedOrigins(("https://party.example:443", "https://*.overlay.example:443"))
    for origin in ("https://party.example", "https://party.example:443",
                   "https://dj.overlay.example"):
        listed = request(headers={"Origin": origin})
        allow_origin(listed, allowed)
        assert listed.responseHeaders.getRawHeaders("access-control-allow-origin") == [origin]
        assert listed.responseHeaders.getRawHeaders("vary") == ["origin"]
    allow_origin(request(), allowed)  # no Origin: not a browser
    for origin in ("https://evil.example", "null", "https://party.example:8443",
                   "http://party.example"):
        with pytest.raises(Refused):
            allow_origin(request(headers={"Origin": origin}), allowed)


class _Stream:
    def __init__(self) -> None:
        self.beats = 0

    def keepalive(self) -> None:
        self.beats += 1


def test_one_keepalive_timer_for_every_stream_only_while_there_are_streams() -> None:
    clock = Clock()
    streams = Streams(SimpleNamespace(), SimpleNamespace(clock=clock), keepalive=15)  # type: ignore[arg-type]
    a, b = _Stream(), _Stream()
    streams.entered(a)  # type: ignore[arg-type]
    streams.entered(b)  # type: ignore[arg-type]
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(14.9)
    assert (a.beats, b.beats) == (0, 0)
    clock.advance(0.1)
    assert (a.beats, b.beats) == (1, 1)
    streams.left(a)  # type: ignore[arg-type]
    clock.advance(15)
    assert (a.beats, b.beats) == (1, 2)
    streams.left(b)  # type: ignore[arg-type]
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(("status", "phrase"), [
    (429, b"Too Many Requests"), (401, b"Unauthorized"), (503, b"Service Unavailable")])
def test_a_refusal_says_its_reason_phrase(status: int, phrase: bytes) -> None:
    refused = request()
    answer(refused, Refused(status, "kind", "why"))
    assert (refused.responseCode, refused.responseMessage) == (status, phrase)


@pytest.mark.parametrize(("exp", "kind"), [
    (-120, "token_expired"),   # long ago
    (-5, "token_expired"),     # within the clock-skew leeway: the stream would end at once
    (600, None),
])
def test_an_expired_token_is_refused_as_token_expired(exp: int, kind: str | None) -> None:
    secret = secrets.token_bytes(32)
    now = time.time()
    token = jwt.encode({"exp": int(now + exp), "events": "*"}, secret, algorithm="HS256")
    with_token = request(args={b"token": [token.encode("ascii")]})
    tokens = Tokens(secret, "HS256")
    if kind is None:
        assert granted(with_token, tokens, now, 1).allows(1)
        return
    with pytest.raises(Refused) as refused:
        granted(with_token, tokens, now, 1)
    assert (refused.value.status, refused.value.kind) == (401, kind)


def test_the_v2_frame_and_the_sse_event_share_one_json_encoding_of_the_change() -> None:
    from partysense.dialects.v2frames import delivery_json, v2_frame

    delivery = Delivery("event_3", parse_change(RECORDED))
    frame = v2_frame(delivery)
    event = sse_frame(delivery)
    encoded = delivery.frame("json", lambda _: pytest.fail("encoded twice"))
    assert encoded is delivery_json(delivery)
    assert event == b"id: 9007\nevent: change\ndata: %s\n\n" % encoded
    assert frame.endswith(encoded)  # the v2 frame: a header, then the very same bytes
