"""A WebSocket client of LiveProtocol with no network: bytes in, frames out.

The protocol runs over a StringTransport; the test feeds it client frames
(tests/rawws.frame) and reads back what it wrote. For ordering and bounds
that a real socket would hide behind timing.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from partysense.core.budgets import budgets_for
from partysense.core.hub import Hub
from partysense.dialects.dialect import ClientCounters, Shared
from partysense.tap import dialect_table
from partysense.wire.protocol import Limits, LiveFactory, LiveProtocol
from tests.fakes import NoDatabase
from tests.rawws import frame

TEXT, CLOSE, PING, PONG = 1, 8, 9, 10

_HANDSHAKE = ("GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              "Sec-WebSocket-Version: 13\r\n")


class Transport(StringTransport):
    """A StringTransport whose producer can be swapped, as a TCP transport's can."""

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self) -> None:
        self.producer = None


def factory_without_database(clock: Any, limits: Limits, events: Any = None,
                             listener: Any = None, budgets: Any = None) -> LiveFactory:
    """The real factory and dialects over a hub with no listener behind it.

    Any request that would ask the database fails (None has no methods),
    unless the test hands in stand-ins: for the wire, not the data.
    """
    counters = ClientCounters()
    shared = Shared(hub=Hub(NoDatabase()), listener=listener, reads=None,
                    events=events, counters=counters, clock=clock,
                    max_subscriptions=limits.max_subscriptions,
                    budgets=budgets or budgets_for())
    return LiveFactory(dialect_table(shared), clock, limits, counters)


def handshake(subprotocol: str | None = None) -> bytes:
    extra = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
    return (_HANDSHAKE + extra + "\r\n").encode("ascii")


def opened(factory: LiveFactory, transport: Any, subprotocol: str | None = None,
           host: str = "127.0.0.1") -> LiveProtocol:
    """A protocol of ``factory`` on ``transport``, past its opening handshake."""
    protocol = factory.buildProtocol(IPv4Address("TCP", host, 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(handshake(subprotocol))
    assert protocol.state == protocol.STATE_OPEN
    return protocol


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


def send_json(protocol: LiveProtocol, body: Any) -> None:
    protocol.dataReceived(frame(json.dumps(body).encode("utf-8")))


def messages(transport: StringTransport) -> list[Any]:
    """Every text message written so far, decoded."""
    return [json.loads(payload) for opcode, payload in server_frames(transport.value())
            if opcode == TEXT]


def close_code(transport: StringTransport) -> int | None:
    """The code of the close frame written so far, if any."""
    for opcode, payload in server_frames(transport.value()):
        if opcode == CLOSE:
            return int(struct.unpack("!H", payload[:2])[0])
    return None
