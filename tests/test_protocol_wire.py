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
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from partysense.adapters.autobahn_adapter import Frame, prepare
from partysense.wire.protocol import Limits, LiveFactory, LiveProtocol
from tests.rawws import frame
from tests.wire import (
    CLOSE,
    PING,
    PONG,
    TEXT,
    Transport,
    close_code,
    factory_without_database,
    handshake,
    messages,
    opened,
    send_json,
    server_frames,
)

pytestmark = pytest.mark.logic


def make_factory(clock: Clock, **limits: Any) -> LiveFactory:
    factory = factory_without_database(clock, Limits(ping_interval=0, **limits))
    # Autobahn's own timers run on the global reactor: none in these tests.
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    return factory


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(clock: Clock) -> Iterator[tuple[LiveProtocol, Transport]]:
    transport = Transport()
    protocol = opened(make_factory(clock), transport)
    transport.clear()
    yield protocol, transport


def change(size: int = 20) -> Frame:
    return prepare(b'{"seq": 1, "x": "' + b"y" * size + b'"}')


def test_a_change_of_this_turn_goes_before_the_close_that_answers_the_client(
        client: tuple[LiveProtocol, Transport], clock: Clock) -> None:
    protocol, transport = client
    protocol.send_frame(change())  # waits in the turn writer
    protocol.dataReceived(frame(struct.pack("!H", 1000), opcode=CLOSE))  # Autobahn answers
    clock.advance(0)
    opcodes = [opcode for opcode, _ in server_frames(transport.value())]
    assert opcodes == [TEXT, CLOSE], "no data frame may follow a close frame"


def test_a_change_of_this_turn_goes_before_our_own_close(
        client: tuple[LiveProtocol, Transport], clock: Clock) -> None:
    protocol, transport = client
    protocol.send_frame(change())
    protocol.close_with(1001, "server shutting down")
    clock.advance(0)
    assert [opcode for opcode, _ in server_frames(transport.value())] == [TEXT, CLOSE]


def test_a_change_of_this_turn_goes_before_a_pong(
        client: tuple[LiveProtocol, Transport], clock: Clock) -> None:
    protocol, transport = client
    protocol.send_frame(change())
    protocol.dataReceived(frame(b"hello", opcode=PING))
    clock.advance(0)
    assert [opcode for opcode, _ in server_frames(transport.value())] == [TEXT, PONG]


def test_pings_from_a_client_that_does_not_read_queue_nothing(
        client: tuple[LiveProtocol, Transport], clock: Clock) -> None:
    protocol, transport = client
    transport.producer.pauseProducing()  # what TCP says once 64 KiB wait unsent
    for _ in range(1000):  # 100 a second: within the frame budget (160 a second)
        protocol.dataReceived(frame(b"p" * 125, opcode=PING))
        clock.advance(0.01)
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
        protocol.dataReceived(handshake())
        assert protocol.state == protocol.STATE_OPEN
        for _ in range(5000):  # about 1.5 MB, in one turn, to a client that never reads
            protocol.send_frame(change(290))
        clock.advance(0)
        assert protocol.outbox is not None
        held = len(server.dataBuffer) + server._tempDataLen + protocol.outbox.waiting_bytes
        limit = factory.limits.max_queue_bytes
        assert held <= limit + 128 * 1024
        assert factory.counters.slow_closed == 1 and protocol.state != protocol.STATE_OPEN
    finally:
        server.stopReading()
        server.stopWriting()
        left.close()
        right.close()


# -- requests that must not end in "internal error" ---------------------------


def v2_client(clock: Clock) -> tuple[LiveProtocol, Transport]:
    transport = Transport()
    protocol = opened(make_factory(clock), transport, "partysense.v2")
    transport.clear()
    return protocol, transport


@pytest.mark.parametrize("request_body", [
    {"type": [], "id": 1},                         # a list is no dict key
    {"type": {"subscribe": 1}, "id": 1},
    {"type": "ping", "id": "\ud800"},              # a lone surrogate cannot be echoed as UTF-8
])
def test_v2_odd_requests_get_bad_request_and_the_connection_stays(
        clock: Clock, request_body: dict[str, Any]) -> None:
    protocol, transport = v2_client(clock)
    send_json(protocol, request_body)
    send_json(protocol, {"type": "ping", "id": "still-there"})
    clock.advance(0)
    answers = messages(transport)
    assert [a["type"] for a in answers] == ["error", "pong"], answers
    assert answers[0]["error"] == "bad_request"
    assert close_code(transport) is None and protocol.state == protocol.STATE_OPEN


@pytest.mark.parametrize("subprotocol", [None, "partysense.v2"])
def test_json_nested_too_deep_closes_as_bad_json_not_as_our_error(
        clock: Clock, subprotocol: str | None) -> None:
    transport = Transport()
    protocol = opened(make_factory(clock), transport, subprotocol)
    transport.clear()
    # Valid JSON, under the 4096-byte limit, deeper than Python's recursion limit.
    protocol.dataReceived(frame(b"[" * 2000 + b"]" * 2000))
    clock.advance(0)
    assert close_code(transport) == 1007
