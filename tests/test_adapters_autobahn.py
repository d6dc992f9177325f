"""Canaries for every private name of Autobahn the daemon uses
(partysense/adapters/autobahn_adapter.py); the check is tests/adapters_support.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from twisted.internet.testing import StringTransport

from partysense.adapters import autobahn_adapter
from tests.adapters_support import canary, parameters

pytestmark = pytest.mark.logic


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

