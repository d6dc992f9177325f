"""WebSocket upgrades handed to Autobahn before twisted.web parses them
(partysense/wire/upgrade.py)."""

from __future__ import annotations

from typing import Any

import pytest
from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.static import Data

from partysense.web.httpguard import GuardedSite
from partysense.web.resources import PageOrWebSocket
from partysense.wire.protocol import Limits, LiveProtocol
from partysense.wire.upgrade import MAX_HEAD, is_websocket_upgrade
from tests.wire import Transport, factory_without_database

pytestmark = pytest.mark.logic

HEAD = (b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.parametrize("data", [
    HEAD,
    HEAD.replace(b"GET / ", b"GET /?token=abc ").replace(b"Upgrade: websocket",
                                                         b"UPGRADE:  WebSocket"),
    HEAD + b"\x81\x85rest-of-a-frame",  # a subscribe sent before the answer
])
def test_whole_upgrade_requests_for_the_root_go_straight(data: bytes) -> None:
    assert is_websocket_upgrade(data)


@pytest.mark.parametrize("data", [
    HEAD[:-2],                                                  # the head not yet whole
    HEAD.replace(b"GET / ", b"POST / "),
    HEAD.replace(b"GET / ", b"HEAD / "),
    HEAD.replace(b"GET / ", b"GET /healthz "),
    HEAD.replace(b"GET / ", b"GET //x "),
    HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
    HEAD.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
    HEAD.replace(b"Upgrade: websocket\r\n", b""),
    HEAD.replace(b"Host:", b"Content-Length: 5\r\nHost:"),
    HEAD.replace(b"Host:", b"Transfer-Encoding: chunked\r\nHost:"),
    HEAD.replace(b"Host: localhost\r\n", b"Host: localhost\r\n folded\r\n"),
    HEAD.replace(b"Host:", b"X-Pad: " + b"x" * MAX_HEAD + b"\r\nHost:"),
    b"GET /\r\n\r\n",
])
def test_anything_else_takes_the_usual_way(data: bytes) -> None:
    assert not is_websocket_upgrade(data)


class Page(Data):
    def __init__(self) -> None:
        super().__init__(b"the page", "text/plain")
        self.rendered = 0

    def render(self, request: Any) -> bytes:
        self.rendered += 1
        return super().render(request)  # type: ignore[no-any-return]


def site_and_page() -> tuple[GuardedSite, Page, Any]:
    clock = Clock()
    factory = factory_without_database(clock, Limits())
    page = Page()
    root = Resource()
    root.putChild(b"", PageOrWebSocket(WebSocketResource(factory), page))
    site = GuardedSite(root, clock, handshake_timeout=10.0, websocket=factory)
    return site, page, factory


def connect(site: GuardedSite) -> tuple[Any, Transport]:
    channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 4000))
    transport = Transport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4000))
    transport.protocol = channel  # as a TCP transport names its protocol
    channel.makeConnection(transport)
    return channel, transport


@pytest.mark.parametrize("pieces", [[HEAD], [HEAD[:40], HEAD[40:]]],
                         ids=["one read: straight", "two reads: through twisted.web"])
def test_either_way_the_client_is_a_websocket_and_the_guard_knows(pieces: list[bytes]) -> None:
    site, page, factory = site_and_page()
    channel, transport = connect(site)
    for piece in pieces:
        channel.dataReceived(piece)
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    assert isinstance(transport.protocol, LiveProtocol)
    assert transport.protocol in factory.clients
    assert channel not in site.waiting and not channel.deadline.active()  # no deadline now
    assert page.rendered == 0


def test_a_plain_request_for_the_root_is_the_page() -> None:
    site, page, factory = site_and_page()
    channel, transport = connect(site)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert page.rendered == 1 and not factory.clients


def test_a_bad_handshake_is_refused_as_before() -> None:
    site, _, factory = site_and_page()
    channel, transport = connect(site)
    channel.dataReceived(HEAD.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 7"))
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert not factory.clients


# 1,900 headers in under 8 KB: twisted.web allows 500 (HTTPChannel.maxHeaders).
MANY_HEADERS = HEAD.replace(b"Host:", b"a:\r\n" * 1900 + b"Host:")


@pytest.mark.parametrize("split", [False, True],
                         ids=["one read: the fast path", "two reads: through twisted.web"])
def test_too_many_headers_are_refused_400_either_way(split: bool) -> None:
    """The fast path handed 1,900 headers to Autobahn: 101, eight times a handshake's CPU."""
    assert len(MANY_HEADERS) < MAX_HEAD
    assert refused_400(MANY_HEADERS, split)


NUL_IN_A_VALUE = HEAD.replace(b"Host:", b"X-Nul: a\x00b\r\nHost:")
CR_IN_A_VALUE = HEAD.replace(b"Host:", b"X-Cr: a\rb\r\nHost:")


@pytest.mark.parametrize("split", [False, True],
                         ids=["one read: the fast path", "two reads: through twisted.web"])
@pytest.mark.parametrize("head", [
    HEAD.replace(b"Host:", b"Bad Name: x\r\nHost:"),         # not a token
    NUL_IN_A_VALUE,
    CR_IN_A_VALUE,
    HEAD.replace(b"GET / ", b"GET /?\x01 "),                  # a target not printable
], ids=["name", "nul", "cr", "target"])
def test_what_twisted_web_refuses_the_fast_path_refuses(head: bytes, split: bool) -> None:
    assert not is_websocket_upgrade(head)  # twisted.web's answer, whatever its version
    lenient = head in (NUL_IN_A_VALUE, CR_IN_A_VALUE) and not twisted_web_refuses_nul_cr()
    if lenient:  # Twisted 24.7.0 (.ci/run's lowest) takes them: the same answer either way
        assert refused_400(head, split) == refused_400(head, not split)
    else:
        assert refused_400(head, split)


def twisted_web_refuses_nul_cr() -> bool:
    """Whether this twisted.web answers 400 to NUL in a header value (24.7.0 does not)."""
    return refused_400(NUL_IN_A_VALUE, split=True)


def refused_400(head: bytes, split: bool) -> bool:
    """Is ``head`` answered 400, and nothing else done, sent whole or in two reads?"""
    site, page, factory = site_and_page()
    channel, transport = connect(site)
    for piece in (head[:40], head[40:]) if split else (head,):
        channel.dataReceived(piece)
    return (transport.value().startswith(b"HTTP/1.1 400 ")
            and not factory.clients and page.rendered == 0)


@pytest.mark.parametrize("head", [
    HEAD.replace(b"Host:", b"a:\r\n" * 501 + b"Host:"),
    HEAD.replace(b"Host:", b"a:\r\n" * 200 + b"Host:"),
])
def test_the_fast_path_takes_what_twisted_web_takes_and_no_more(head: bytes) -> None:
    from twisted.web.http import HTTPChannel

    from partysense.wire.upgrade import HeadLimits

    headers = head.count(b"\r\n") - 2  # without the request line and the blank line
    assert is_websocket_upgrade(head) == (headers <= HTTPChannel.maxHeaders)
    size = len(head) - 2 * head.count(b"\r\n")  # as twisted.web counts it: lines without CRLF
    if headers <= HTTPChannel.maxHeaders:
        assert is_websocket_upgrade(head, HeadLimits(max_headers=500, max_size=size))
    # One byte past the head's size: twisted.web says 400.
    assert not is_websocket_upgrade(head, HeadLimits(max_headers=500, max_size=size - 1))
    assert not is_websocket_upgrade(head, HeadLimits(max_headers=500, max_size=16384,
                                                     max_line=20))  # a line too long
