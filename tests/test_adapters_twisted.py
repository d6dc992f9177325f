"""Canaries for every private name of Twisted the daemon uses
(partysense/adapters/twisted_adapter.py): a TCP server's write buffer, and a
connection taken over from twisted.web. twisted.web's own are in
tests/test_adapters_twisted_web.py; the check is tests/adapters_support.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from partysense.adapters import twisted_adapter
from tests.adapters_support import canary

pytestmark = pytest.mark.logic


# -- Twisted -----------------------------------------------------------------

@pytest.fixture
def server() -> Iterator[tcp.Server]:
    ours, theirs = socket.socketpair()
    transport = tcp.Server(ours, None, ("127.0.0.1", 1), None, 1, MemoryReactorClock())
    yield transport
    ours.close()
    theirs.close()


@pytest.mark.parametrize("name", ["_tempDataLen", "dataBuffer", "_writeDisconnected"])
def test_twisted_tcp_server_buffer_state(server: tcp.Server, name: str) -> None:
    canary("twisted", f"tcp.Server.{name}", hasattr(server, name),
           "an attribute of an open tcp.Server")


def test_twisted_a_fresh_tcp_server_can_send_at_once(server: tcp.Server) -> None:
    # If this turns False, write_now silently takes the slow way for everybody.
    canary("twisted", "tcp.Server write buffer (_tempDataLen, dataBuffer, _writeDisconnected)",
           twisted_adapter.can_send_now(server), "an empty buffer on a fresh connection")


# -- Twisted: a connection taken over from twisted.web ----------------------

class _Collecting(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def test_twisted_site_is_known_to_the_channels_it_builds() -> None:
    site = Site(Resource())
    site.protocol = HTTPChannel  # type: ignore[assignment]  # as GuardedSite, no HTTP/2 wrapper
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    canary("twisted", "HTTPChannel.site (set by Site.buildProtocol)",
           twisted_adapter.site_of_channel(channel) is site, "the Site that built the channel")
    assert twisted_adapter.site_of_channel(HTTPChannel()) is None


def test_twisted_channel_gives_its_transport_up() -> None:
    channel = HTTPChannel()
    transport = StringTransport()
    channel.makeConnection(transport)
    canary("twisted", "HTTPChannel.transport",
           twisted_adapter.transport_of_channel(channel) is transport, "the channel's transport")
    taken = twisted_adapter.take_over(channel)
    channel.setTimeout(None)
    canary("twisted", "HTTPChannel.transport (set to None)",
           taken is transport and twisted_adapter.transport_of_channel(channel) is None,
           "a plain attribute the channel can be made to forget")


def test_twisted_tcp_connection_hands_what_it_reads_to_its_protocol() -> None:
    ours, theirs = socket.socketpair()
    try:
        server = tcp.Server(ours, _Collecting(), ("127.0.0.1", 1), None, 1, MemoryReactorClock())
        taker = _Collecting()
        twisted_adapter.switch_protocol(server, taker)
        theirs.sendall(b"GET / HTTP/1.1\r\n")
        server.doRead()
        canary("twisted", "tcp.Connection.protocol",
               server.protocol is taker and taker.received == b"GET / HTTP/1.1\r\n",
               "the protocol the connection hands what it reads")
    finally:
        ours.close()
        theirs.close()


def test_twisted_tls_hands_what_it_reads_to_its_wrapped_protocol() -> None:
    canary("twisted", "TLSMemoryBIOProtocol (a ProtocolWrapper)",
           issubclass(TLSMemoryBIOProtocol, ProtocolWrapper),
           "TLS wraps the application's protocol in a ProtocolWrapper")
    wrapper = ProtocolWrapper(WrappingFactory(Factory()), _Collecting())
    taker = _Collecting()
    twisted_adapter.switch_protocol(wrapper, taker)
    wrapper.dataReceived(b"hello")
    canary("twisted", "ProtocolWrapper.wrappedProtocol", taker.received == b"hello",
           "the protocol a wrapper hands what it reads")
    # After startTLS, a TCP connection's protocol is the TLS wrapper: the wrapped one changes.
    connection = StringTransport()
    connection.protocol = wrapper  # type: ignore[attr-defined]
    last = _Collecting()
    twisted_adapter.switch_protocol(connection, last)
    assert connection.protocol is wrapper and wrapper.wrappedProtocol is last  # type: ignore[attr-defined]

