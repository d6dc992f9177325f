"""Connections not yet upgraded, bounded per address and in all (partysense/wire/waiting.py).

The logic here, over fake transports; the daemon under a small open-files
limit, with thousands of idle sockets, in tests/test_idle_sockets.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import INegotiated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import Data
from zope.interface import implementer

from partysense.web.httpguard import GuardedSite, Refusal
from partysense.web.resources import PageOrWebSocket
from partysense.wire.protocol import Limits, LiveFactory
from partysense.wire.waiting import Waiting
from tests.wire import Transport, factory_without_database, handshake

pytestmark = pytest.mark.logic


class Slow(Resource):
    """A resource that answers only when the test says (as /api/events waits for the database)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


def a_site(waiting: Waiting, factory: LiveFactory | None = None) -> tuple[GuardedSite, Slow]:
    slow = Slow()
    root = Resource()
    if factory is not None:
        root.putChild(b"", PageOrWebSocket(WebSocketResource(factory),
                                           Data(b"page", "text/plain")))
    root.putChild(b"slow", slow)
    site = GuardedSite(root, Clock(), handshake_timeout=10.0, waiting=waiting,
                       websocket=factory)
    return site, slow


@implementer(INegotiated)
class TLSTransport(Transport):
    """As a TLS connection looks to the channel (TLSMemoryBIOProtocol)."""

    negotiatedProtocol = None
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def connect(site: GuardedSite, host: str = "192.0.2.7", port: int = 4000,
            kind: type[Transport] = Transport) -> tuple[Any, Transport]:
    address = IPv4Address("TCP", host, port)
    protocol = site.buildProtocol(address)
    transport = kind(peerAddress=address)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def test_when_the_budget_is_full_the_oldest_idle_connection_makes_room() -> None:
    """An attacker's idle sockets are the oldest: they go, a newcomer is served."""
    site, _ = a_site(Waiting(budget=3))
    idle = [connect(site, port=4000 + n) for n in range(3)]
    newcomer, newcomer_transport = connect(site, host="198.51.100.9")
    assert not isinstance(newcomer, Refusal)
    first_channel, first = idle[0]
    assert first.value().startswith(b"HTTP/1.1 408 ") and first.disconnecting
    assert not any(transport.disconnecting for _, transport in idle[1:])
    assert len(site.waiting) == 3 and first_channel not in site.waiting
    assert site.refused["idle_closed"] == 1
    newcomer.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert newcomer_transport.value().startswith(b"HTTP/1.1 404 ")  # answered, not refused


def test_a_connection_being_answered_is_not_closed_for_a_newcomer() -> None:
    site, slow = a_site(Waiting(budget=2))
    busy, busy_transport = connect(site, port=4000)
    busy.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    _, idle_transport = connect(site, port=4001)
    third, _ = connect(site, port=4002)
    assert idle_transport.disconnecting and not busy_transport.disconnecting
    third.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    # Every one is being answered: the next is refused at once (503), nothing else moves.
    refused, refused_transport = connect(site, port=4003)
    assert isinstance(refused, Refusal)
    assert refused_transport.value().startswith(b"HTTP/1.1 503 ")
    assert refused_transport.disconnecting and site.refused["no_room"] == 1
    # Answered, the first is idle again: the next newcomer closes it.
    slow.requests[0].write(b"done")
    slow.requests[0].finish()
    assert busy_transport.value().startswith(b"HTTP/1.1 200 ")
    connect(site, port=4004)
    assert busy_transport.value().endswith(b"HTTP/1.1 408 Request Timeout\r\n"
                                           b"Content-Type: text/plain; charset=utf-8\r\n"
                                           b"Connection: close\r\nContent-Length: 0\r\n\r\n")
    assert busy_transport.disconnecting


def test_a_connection_closed_or_upgraded_leaves_the_books() -> None:
    factory = factory_without_database(Clock(), Limits(ping_interval=0))
    site, _ = a_site(Waiting(budget=10), factory)
    closed, _ = connect(site, port=4000)
    upgraded, transport = connect(site, port=4001)
    assert len(site.waiting) == 2
    closed.connectionLost(Failure(ConnectionError("gone")))
    upgraded.dataReceived(handshake())
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    assert len(site.waiting) == 0 and site.waiting.from_address("192.0.2.7") == 0
    assert not site._clock.getDelayedCalls()  # type: ignore[attr-defined]


@pytest.mark.parametrize("pieces", [1, 2], ids=["fast path", "through twisted.web"])
def test_waiting_and_upgraded_connections_count_together_per_address(pieces: int) -> None:
    """--max-connections-per-ip counts a connection from accept, not from its upgrade:
    reconnecting, or never upgrading, does not reset it."""
    factory = factory_without_database(Clock(), Limits(ping_interval=0, max_connections_per_ip=3))
    site, _ = a_site(Waiting(budget=100, max_per_address=3,
                             upgraded_from=factory.connected_from), factory)
    websocket, transport = connect(site, port=4000)
    head = handshake()
    for piece in (head[:20], head[20:]) if pieces == 2 else (head,):
        websocket.dataReceived(piece)
    assert transport.value().startswith(b"HTTP/1.1 101 ") and factory.connected_from("192.0.2.7")
    connect(site, port=4001)
    connect(site, port=4002)  # one upgraded and two waiting: three
    refused, refused_transport = connect(site, port=4003)
    assert isinstance(refused, Refusal)
    assert refused_transport.value().startswith(b"HTTP/1.1 429 ")
    assert b"--max-connections-per-ip" in refused_transport.value()
    assert site.refused["per_address"] == 1
    other, _ = connect(site, host="198.51.100.9")  # another address is not touched
    assert not isinstance(other, Refusal)
    # The WebSocket leaves: its place is free again.
    transport.protocol.connectionLost(Failure(ConnectionError("gone")))
    assert not isinstance(connect(site, port=4004)[0], Refusal)


def test_behind_trusted_proxies_only_the_budget_holds() -> None:
    site, _ = a_site(Waiting(budget=100, max_per_address=None))
    assert not any(isinstance(connect(site, port=4000 + n)[0], Refusal) for n in range(10))


def test_on_tls_before_its_handshake_a_connection_is_closed_at_once_with_nothing_said() -> None:
    """Written to TLS before the handshake, the 408 (and the close after it)
    would wait for a ClientHello an idle socket never sends: its file, kept for ever."""
    site, _ = a_site(Waiting(budget=2, max_per_address=2))
    _, idle = connect(site, port=4000, kind=TLSTransport)
    second, answered = connect(site, port=4001, kind=TLSTransport)
    _, refused = connect(site, port=4002, kind=TLSTransport)  # a third from the address
    assert isinstance(refused, TLSTransport) and refused.aborted and refused.value() == b""
    connect(site, host="198.51.100.9", kind=TLSTransport)  # a newcomer: the oldest goes
    assert isinstance(idle, TLSTransport) and idle.aborted and idle.value() == b""
    assert (site.refused["idle_closed"], site.refused["per_address"]) == (1, 1)
    # Once a request came over it, its handshake is done: the 408 can be said.
    second.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    connect(site, host="198.51.100.10", kind=TLSTransport)
    assert isinstance(answered, TLSTransport) and not answered.aborted
    assert b"HTTP/1.1 408 " in answered.value() and answered.disconnecting
