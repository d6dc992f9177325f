"""Canaries for every third-party private name the daemon uses.

Each lives in one adapter module (partysense/adapters/); when an upgrade
removes a name or changes its shape, the test fails with a message naming the
library, the name and the version installed, instead of the daemon breaking
silently (docs/architecture.md lists them and says why we need each).
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site
from txpostgres import txpostgres

from partysense.adapters import autobahn_adapter, twisted_adapter, txpostgres_adapter

pytestmark = pytest.mark.logic


def canary(library: str, name: str, ok: bool, shape: str) -> None:
    assert ok, (f"{library} {metadata.version(library)}: {name} is gone or changed shape "
                f"(expected {shape}); see docs/architecture.md")


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


# -- txpostgres --------------------------------------------------------------

@pytest.fixture
def connection() -> txpostgres.Connection:
    return txpostgres.Connection(reactor=MemoryReactorClock(), cooperator=None)


def test_txpostgres_connection_takes_a_reactor_and_a_cooperator() -> None:
    canary("txpostgres", "Connection.__init__(reactor, cooperator)",
           {"reactor", "cooperator"} <= set(parameters(txpostgres.Connection.__init__)),
           "keyword arguments reactor= and cooperator=")


def test_txpostgres_doit_wraps_every_query(connection: txpostgres.Connection) -> None:
    canary("txpostgres", "Connection._doit", callable(getattr(connection, "_doit", None))
           and parameters(txpostgres.Connection._doit)[:2] == ["self", "method"],
           "_doit(self, method, *args, **kwargs)")


def test_txpostgres_lock_keeps_its_waiters_in_a_list(connection: txpostgres.Connection) -> None:
    canary("txpostgres", "Connection.lock.waiting",
           isinstance(getattr(getattr(connection, "lock", None), "waiting", None), list),
           "a DeferredLock with a .waiting list")


@pytest.mark.parametrize("name", ["_pollingD", "_connection", "_cursors"])
def test_txpostgres_connection_state(connection: txpostgres.Connection, name: str) -> None:
    canary("txpostgres", f"Connection.{name}", hasattr(connection, name),
           "an attribute set by __init__")


@pytest.mark.parametrize("name", ["doRead", "connectionLost", "cursorFinished", "close"])
def test_txpostgres_connection_methods_we_override(name: str) -> None:
    canary("txpostgres", f"Connection.{name}", callable(getattr(txpostgres.Connection, name, None)),
           "a method")


def test_txpostgres_cursor_execute_and_rollback_failed() -> None:
    canary("txpostgres", "Cursor.execute(query, params)",
           parameters(txpostgres.Cursor.execute)[:3] == ["self", "query", "params"],
           "execute(self, query, params=None)")
    canary("txpostgres", "Cursor._connection",
           "_connection" in parameters(txpostgres.Cursor.__init__)
           or "connection" in parameters(txpostgres.Cursor.__init__), "Cursor(cursor, connection)")
    canary("txpostgres", "RollbackFailed.originalFailure",
           "originalFailure" in parameters(txpostgres.RollbackFailed.__init__),
           "RollbackFailed(connection, originalFailure)")


def test_our_connection_fails_every_query_queued_when_closed() -> None:
    connection = txpostgres_adapter.PgConnection(MemoryReactorClock(), on_lost=lambda why: None)
    failures: list[Any] = []
    connection.runQuery("SELECT 1").addErrback(failures.append)
    assert failures and "closed" in failures[0].getErrorMessage()


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


# -- Autobahn ----------------------------------------------------------------

@pytest.fixture
def protocol() -> WebSocketServerProtocol:
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    return protocol


def test_autobahn_prepared_message_is_the_framed_text() -> None:
    prepared = PreparedMessage(b"hello", False, False, True)
    canary("autobahn", "PreparedMessage.payloadHybi",
           getattr(prepared, "payloadHybi", None) == b"\x81\x05hello",
           "the unmasked frame bytes of a text message")
    assert autobahn_adapter.prepare(b"hello") == b"\x81\x05hello"


def test_autobahn_protocol_write_path(protocol: WebSocketServerProtocol) -> None:
    canary("autobahn", "WebSocketProtocol.send_queue",
           hasattr(getattr(protocol, "send_queue", None), "__len__"), "a queue of frames")
    canary("autobahn", "WebSocketProtocol.sendData(data, sync, chopsize)",
           parameters(protocol.sendData)[:3] == ["data", "sync", "chopsize"],
           "sendData(data, sync=False, chopsize=None)")
    stats = getattr(protocol, "trafficStats", None)
    canary("autobahn", "WebSocketProtocol.trafficStats.outgoingOctetsWireLevel",
           isinstance(getattr(stats, "outgoingOctetsWireLevel", None), int), "a byte count")
    canary("autobahn", "WebSocketProtocol.trafficStats.preopenOutgoingOctetsWireLevel",
           isinstance(getattr(stats, "preopenOutgoingOctetsWireLevel", None), int),
           "a byte count")
    canary("autobahn", "WebSocketProtocol.logOctets", isinstance(protocol.logOctets, bool),
           "an option: log every octet sent")


def test_autobahn_fail_connection_hook(protocol: WebSocketServerProtocol) -> None:
    canary("autobahn", "WebSocketProtocol._fail_connection(code, reason)",
           parameters(protocol._fail_connection)[:2] == ["code", "reason"],
           "_fail_connection(code=1001, reason='going away')")
    canary("autobahn", "WebSocketProtocol.failedByMe", hasattr(protocol, "failedByMe"),
           "a flag set when the connection was failed by us")


def test_autobahn_allow_null_origin_is_a_protocol_option() -> None:
    factory = autobahn_adapter.ServerFactory()
    factory.allow_null_origin = True
    factory.setProtocolOptions(autoPingInterval=5)
    canary("autobahn", "WebSocketServerFactory.allowNullOrigin",
           getattr(factory, "allowNullOrigin", None) is True,
           "set by setProtocolOptions(allowNullOrigin=...)")


def test_autobahn_config_attrs_are_what_a_connection_copies() -> None:
    names = getattr(WebSocketServerProtocol, "CONFIG_ATTRS", None)
    canary("autobahn", "WebSocketServerProtocol.CONFIG_ATTRS",
           isinstance(names, (list, tuple)) and "autoPingInterval" in names
           and "maxMessagePayloadSize" in names,
           "the names of the options _connectionMade copies from the factory")


def test_autobahn_settings_reach_connections_without_per_connection_formatting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from autobahn.websocket import protocol as autobahn_protocol

    formatted: list[Any] = []
    monkeypatch.setattr(autobahn_protocol, "pformat",
                        lambda value, *args, **kwargs: formatted.append(value) or "")
    factory = autobahn_adapter.ServerFactory()
    factory.protocol = autobahn_adapter.ServerProtocol
    factory.setProtocolOptions(autoPingInterval=7, maxMessagePayloadSize=123)
    factory.setProtocolOptions(autoPingInterval=9)  # the later call wins
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    assert isinstance(protocol, autobahn_adapter.ServerProtocol)
    assert (protocol.autoPingInterval, protocol.maxMessagePayloadSize) == (9, 123)
    assert protocol.openHandshakeTimeout == factory.openHandshakeTimeout
    # A function-valued option stays the function, not a method of the protocol.
    assert protocol.perMessageCompressionAccept([]) is None
    # Autobahn formats what it copied for a debug line: nothing is left to copy.
    canary("autobahn", "WebSocketProtocol._connectionMade's pformat of CONFIG_ATTRS",
           all(value == [] for value in formatted), "a list of the options copied")


def test_autobahn_handshake_answer_goes_out_whole_and_counted() -> None:
    factory = autobahn_adapter.ServerFactory()
    factory.protocol = autobahn_adapter.ServerProtocol
    factory.setProtocolOptions(openHandshakeTimeout=0)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 101 ") and answer.endswith(b"\r\n\r\n")
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in answer  # RFC 6455's example accept
    assert protocol.trafficStats.preopenOutgoingOctetsWireLevel == len(answer)


def test_autobahn_frame_begin_sees_every_frame_with_its_opcode() -> None:
    from tests.rawws import frame
    from tests.wire import Transport, handshake

    seen: list[Any] = []

    class Counting(WebSocketServerProtocol):
        def onFrameBegin(self) -> None:
            seen.append(self.current_frame.opcode)
            super().onFrameBegin()

    factory = WebSocketServerFactory()
    factory.protocol = Counting
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(Transport())  # one that lets Autobahn unregister its producer
    protocol.dataReceived(handshake())
    # A text message in three fragments with a ping and a pong between them, then a close.
    protocol.dataReceived(frame(b"a", opcode=1, fin=False) + frame(b"", opcode=0, fin=False)
                          + frame(b"p", opcode=9) + frame(b"", opcode=10)
                          + frame(b"b", opcode=0) + frame(b"\x03\xe8", opcode=8))
    canary("autobahn", "WebSocketProtocol.onFrameBegin with current_frame.opcode",
           seen == [1, 0, 9, 10, 0, 8],
           "called once per frame read, control frames and continuations included")


def test_autobahn_data_is_the_buffer_its_parse_loop_reads() -> None:
    from tests.rawws import frame
    from tests.wire import Transport, handshake

    seen: list[Any] = []

    class Dropping(WebSocketServerProtocol):
        def onFrameBegin(self) -> None:
            seen.append(self.current_frame.opcode)
            self.data = b""  # what stop_reading() does
            super().onFrameBegin()

    factory = WebSocketServerFactory()
    factory.protocol = Dropping
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(Transport())
    protocol.dataReceived(handshake())
    protocol.dataReceived(frame(b"a", opcode=9)[:1])  # half a header: kept, not parsed
    canary("autobahn", "WebSocketProtocol.data", getattr(protocol, "data", None) == b"\x89",
           "the bytes read and not yet parsed")
    protocol.dataReceived(frame(b"a", opcode=9)[1:] + frame(b"b", opcode=9) * 3)
    canary("autobahn", "WebSocketProtocol.data", seen == [9],
           "emptied, the parse loop ends: the frames after it are never parsed")


class _Heard(autobahn_adapter.ServerProtocol):
    """Our protocol as the adapter sees it, with what Autobahn logged kept."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[tuple[str, str]] = []

    def autobahn_logged(self, level: str, format: str, fields: dict[str, Any]) -> None:
        self.heard.append((level, format))


def test_autobahn_logs_a_bad_handshake_through_its_log_attribute() -> None:
    factory = autobahn_adapter.ServerFactory()
    factory.protocol = _Heard
    factory.setProtocolOptions(openHandshakeTimeout=0)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    transport.unregisterProducer = lambda: None  # type: ignore[method-assign]  # none here
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /?token=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Version: 99\r\n\r\n")
    levels = [level for level, _ in protocol.heard]
    canary("autobahn", "WebSocketProtocol.log (per-connection lines through self.log)",
           "info" in levels and "warn" in levels,
           "a failed handshake logged at info and warn through self.log")
    canary("autobahn", "WebSocketServerProtocol.http_request_uri",
           protocol.request_target == b"/?token=x", "the request target, a str")
    stats = protocol.trafficStats
    canary("autobahn", "WebSocketProtocol.trafficStats.(preopen)IncomingOctetsWireLevel",
           isinstance(stats.incomingOctetsWireLevel, int)
           and stats.preopenIncomingOctetsWireLevel > 0, "byte counts")
    canary("autobahn", "WebSocketProtocol.closedByMe, localCloseCode, localCloseReason",
           all(hasattr(protocol, name) for name in ("closedByMe", "localCloseCode",
                                                     "localCloseReason")),
           "how we closed the connection")


def test_autobahn_send_close_frame_takes_any_close_code() -> None:
    from tests.wire import CLOSE, Transport, handshake, server_frames

    canary("autobahn", "WebSocketProtocol.sendCloseFrame(code, reasonUtf8, isReply)",
           parameters(WebSocketServerProtocol.sendCloseFrame)[:4]
           == ["self", "code", "reasonUtf8", "isReply"],
           "sendCloseFrame(code=None, reasonUtf8=None, isReply=False)")
    factory = autobahn_adapter.ServerFactory()
    factory.protocol = autobahn_adapter.ServerProtocol
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    protocol = factory.buildProtocol(None)
    transport = Transport()
    protocol.makeConnection(transport)
    protocol.dataReceived(handshake())
    transport.clear()
    protocol.start_closing_handshake(1008, b"policy")  # sendClose() refuses 1008
    canary("autobahn", "WebSocketProtocol.sendCloseFrame",
           server_frames(transport.value()) == [(CLOSE, b"\x03\xf0policy")]
           and protocol.state == protocol.STATE_CLOSING,
           "one close frame with the code and reason given, the connection closing")


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


# -- twisted.web (partysense/adapters/twisted_web_adapter.py) -------------------


def _streamed_request(clientproto: bytes) -> tuple[Any, StringTransport]:
    from twisted.web.http import HTTPChannel
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    transport = StringTransport()
    channel = HTTPChannel()  # as partysense/wire/upgrade.py's UpgradingChannel
    channel.site = Site(Resource())
    channel.makeConnection(transport)
    request = Request(channel, queued=False)
    request.clientproto = clientproto
    request.method = b"GET"
    request.uri = request.path = b"/events/1/stream"
    return request, transport


def test_twisted_web_request_reaches_the_connection_transport() -> None:
    from partysense.adapters import twisted_web_adapter

    request, transport = _streamed_request(b"HTTP/1.1")
    canary("twisted", "Request.channel.transport",
           twisted_web_adapter.raw_transport(request) is transport,
           "the channel's transport, to write around Request.write")
    request.channel.connectionLost(None)


def test_twisted_web_last_response_ends_the_keepalive() -> None:
    from partysense.adapters import twisted_web_adapter

    request, _ = _streamed_request(b"HTTP/1.1")
    canary("twisted", "HTTPChannel.persistent", request.channel.persistent in (1, True),
           "a flag, true until the channel decides to close after a response")
    twisted_web_adapter.last_response(request)
    assert not request.channel.persistent
    assert request.responseHeaders.getRawHeaders("connection") == ["close"]
    request.channel.connectionLost(None)


@pytest.mark.parametrize("clientproto, chunked", [(b"HTTP/1.1", True), (b"HTTP/1.0", False)])
def test_twisted_web_chunks_a_response_of_unknown_length(clientproto: bytes,
                                                         chunked: bool) -> None:
    from partysense.adapters import twisted_web_adapter

    request, transport = _streamed_request(clientproto)
    request.write(b"retry: 2000\n\n")
    canary("twisted", "Request.chunked", twisted_web_adapter.is_chunked(request) is chunked,
           "True once the head is out, for an HTTP/1.1 response of unknown length")
    assert (b"\r\nd\r\nretry: 2000\n\n\r\n" in transport.value()) is chunked
    request.channel.connectionLost(None)


def test_twisted_web_sent_length_counts_the_body() -> None:
    from partysense.adapters import twisted_web_adapter

    request, _ = _streamed_request(b"HTTP/1.1")
    request.write(b"0123456789")
    canary("twisted", "Request.sentLength", request.sentLength == 10,
           "an int, the body bytes written so far")
    twisted_web_adapter.written_around(request, 5)
    assert request.sentLength == 15
    request.channel.connectionLost(None)
