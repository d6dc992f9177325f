"""What LiveProtocol puts on the wire, byte for byte, with no network and no database.

A protocol over a StringTransport (or a real socket pair where Twisted's own
buffering matters), a Clock for the turn writer: the order of our frames
against Autobahn's, and what a client that does not read can make us hold.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from autobahn.websocket.protocol import PreparedMessage
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from partysense.hub import Hub
from partysense.protocol import Limits, LiveFactory, LiveProtocol
from tests.rawws import frame

HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")
TEXT, CLOSE, PING, PONG = 1, 8, 9, 10


class Transport(StringTransport):
    """A StringTransport whose producer can be swapped, as a TCP transport's can."""

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self) -> None:
        self.producer = None


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of every frame the server wrote."""
    frames, at = [], 0
    while at < len(data):
        first, second = data[at], data[at + 1]
        at += 2
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", data[at:at + 2])[0]
            at += 2
        elif length == 127:
            length = struct.unpack("!Q", data[at:at + 8])[0]
            at += 8
        frames.append((first & 0x0F, data[at:at + length]))
        at += length
    return frames


def make_factory(clock: Clock, **limits: Any) -> LiveFactory:
    factory = LiveFactory(Hub(), None, None, clock,  # type: ignore[arg-type]
                          Limits(ping_interval=0, **limits))
    # Autobahn's own timers run on the global reactor: none in these tests.
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    return factory


def opened(factory: LiveFactory, transport: Any) -> LiveProtocol:
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(HANDSHAKE)
    assert protocol.state == protocol.STATE_OPEN
    return protocol


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(clock: Clock) -> Iterator[tuple[LiveProtocol, Transport]]:
    transport = Transport()
    protocol = opened(make_factory(clock), transport)
    transport.clear()
    yield protocol, transport


def change(size: int = 20) -> PreparedMessage:
    return PreparedMessage(b'{"seq": 1, "x": "' + b"y" * size + b'"}', False, False, True)


def test_a_change_of_this_turn_goes_before_the_close_that_answers_the_client(
        client: tuple[LiveProtocol, Transport], clock: Clock) -> None:
    protocol, transport = client
    protocol.send_prepared(change())  # waits in the turn writer
    protocol.dataReceived(frame(struct.pack("!H", 1000), opcode=CLOSE))  # Autobahn answers
    clock.advance(0)
    opcodes = [opcode for opcode, _ in server_frames(transport.value())]
    assert opcodes == [TEXT, CLOSE], "no data frame may follow a close frame"


def test_a_change_of_this_turn_goes_before_our_own_close(
        client: tuple[LiveProtocol, Transport], clock: Clock) -> None:
    protocol, transport = client
    protocol.send_prepared(change())
    protocol.close_with(1001, "server shutting down")
    clock.advance(0)
    assert [opcode for opcode, _ in server_frames(transport.value())] == [TEXT, CLOSE]


def test_a_change_of_this_turn_goes_before_a_pong(
        client: tuple[LiveProtocol, Transport], clock: Clock) -> None:
    protocol, transport = client
    protocol.send_prepared(change())
    protocol.dataReceived(frame(b"hello", opcode=PING))
    clock.advance(0)
    assert [opcode for opcode, _ in server_frames(transport.value())] == [TEXT, PONG]


def test_pings_from_a_client_that_does_not_read_queue_nothing(
        client: tuple[LiveProtocol, Transport]) -> None:
    protocol, transport = client
    transport.producer.pauseProducing()  # what TCP says once 64 KiB wait unsent
    for _ in range(1000):
        protocol.dataReceived(frame(b"p" * 125, opcode=PING))
    assert len(transport.value()) == 0
    transport.producer.resumeProducing()
    protocol.dataReceived(frame(b"again", opcode=PING))
    assert server_frames(transport.value()) == [(PONG, b"again")]


def test_a_close_reason_cut_to_123_bytes_stays_utf8(
        client: tuple[LiveProtocol, Transport]) -> None:
    protocol, transport = client
    # libpq's messages are localised: a reason may be far from ASCII.
    protocol.close_with(1013, "la base de données est injoignable " + "é" * 80)
    [(opcode, payload)] = server_frames(transport.value())
    assert opcode == CLOSE and len(payload) <= 125
    reason = payload[2:].decode("utf-8")  # must not raise
    assert reason.startswith("la base de données")


def test_a_turn_of_many_changes_for_a_stalled_client_stays_bounded(clock: Clock) -> None:
    """The turn writer must let TCP push back before max_queue_bytes is reached.

    A catch-up after an outage hands a client thousands of changes in one
    reactor turn; held in the turn writer they would all land in Twisted's
    unbounded buffer, past the slow-client limit.
    """
    from twisted.internet import reactor

    left, right = socket.socketpair()
    left.setblocking(False)
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    right.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    factory = make_factory(clock)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    port = SimpleNamespace(_realPortNumber=1)  # all tcp.Server wants of its port
    server = tcp.Server(left, protocol, ("127.0.0.1", 1), port, 1, reactor)
    try:
        protocol.makeConnection(server)
        protocol.dataReceived(HANDSHAKE)
        assert protocol.state == protocol.STATE_OPEN
        for _ in range(5000):  # about 1.5 MB, in one turn, to a client that never reads
            protocol.send_prepared(change(290))
        clock.advance(0)
        held = len(server.dataBuffer) + server._tempDataLen + protocol._backlog_bytes
        limit = factory.limits.max_queue_bytes
        assert held <= limit + 128 * 1024
        assert factory.slow_closed == 1 and protocol.state != protocol.STATE_OPEN
    finally:
        server.stopReading()
        server.stopWriting()
        left.close()
        right.close()
