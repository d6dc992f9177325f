"""Every frame a client sends counts (partysense/wire/frames.py): pings, pongs,
closes and fragments, not only messages.

Found: one connection pinging as fast as it could, or sending a text frame
with FIN=0 and then empty continuation frames without end, held a core of
the daemon and was never closed. The daemon tests are in
tests/test_frame_floods.py.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from partysense.wire.frames import FloodedAddresses, FrameBudget
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
    messages,
    opened,
    server_frames,
)

pytestmark = pytest.mark.logic

CONTINUATION = 0


def client(clock: Clock, factory: LiveFactory | None = None, host: str = "192.0.2.1",
           **limits: Any) -> tuple[LiveProtocol, Transport]:
    if factory is None:
        factory = factory_without_database(clock, Limits(ping_interval=0, **limits))
        # Autobahn's own timers run on the global reactor: none in these tests.
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    transport = Transport(peerAddress=IPv4Address("TCP", host, 40000))
    protocol = opened(factory, transport, "partysense.v2", host=host)
    transport.clear()
    return protocol, transport


def close_reason(transport: Transport) -> bytes:
    return next(payload[2:] for opcode, payload in server_frames(transport.value())
                if opcode == CLOSE)


# -- the budget on its own -------------------------------------------------------

def test_the_rate_in_a_second_then_refused_until_the_second_is_over() -> None:
    clock = Clock()
    budget = FrameBudget(clock, per_second=10)
    assert all(budget.refusal(PING) is None for _ in range(10))
    clock.advance(0.9)
    refused = budget.refusal(PING)
    assert refused is not None and refused.code == 4029 and refused.kind == "frame_flood"
    clock.advance(0.1)  # a second since the window's first frame: a new window
    assert all(budget.refusal(PONG) is None for _ in range(10))
    assert budget.refusal(PONG) is not None


def test_frames_under_the_rate_are_never_refused() -> None:
    clock = Clock()
    budget = FrameBudget(clock, per_second=10)
    for _ in range(1000):  # 110 s at 9 a second
        assert budget.refusal(TEXT) is None
        clock.advance(0.11)


def test_a_message_in_too_many_fragments() -> None:
    budget = FrameBudget(Clock(), per_second=1000, max_fragments=4)
    assert budget.refusal(TEXT) is None
    for _ in range(3):
        assert budget.refusal(CONTINUATION) is None
        assert budget.refusal(PING) is None  # a control frame between fragments is no fragment
    refused = budget.refusal(CONTINUATION)
    assert refused is not None and refused.code == 4029 and refused.kind == "too_many_fragments"
    assert "more than 4 frames" in refused.reason


def test_each_message_has_its_own_fragment_count() -> None:
    budget = FrameBudget(Clock(), per_second=1000, max_fragments=4)
    for _ in range(10):
        assert budget.refusal(TEXT) is None
        assert all(budget.refusal(CONTINUATION) is None for _ in range(3))


def test_a_zero_message_rate_does_not_divide_by_zero() -> None:
    budget = FrameBudget(Clock(), per_second=0)
    assert budget.refusal(PING) is None
    assert budget.refusal(PING) is not None


# -- on the wire -------------------------------------------------------------------

@pytest.mark.parametrize("opcode", [PING, PONG])
def test_a_flood_of_control_frames_is_closed_with_4029(opcode: int) -> None:
    clock = Clock()
    protocol, transport = client(clock, messages_per_second=20)  # 160 frames a second
    protocol.dataReceived(frame(b"x" * 16, opcode=opcode) * 160)
    assert close_code(transport) is None
    protocol.dataReceived(frame(b"x" * 16, opcode=opcode))
    assert close_code(transport) == 4029
    assert b"more than 160 frames a second (pings, pongs and fragments count)" in (
        close_reason(transport))
    assert protocol.factory.counters.bad_inputs == {"frame_flood": 1}


def test_pongs_stop_once_the_flood_is_refused() -> None:
    clock = Clock()
    protocol, transport = client(clock, messages_per_second=20)
    protocol.dataReceived(frame(b"p", opcode=PING) * 1000)
    clock.advance(0)
    opcodes = [opcode for opcode, _ in server_frames(transport.value())]
    assert opcodes == [PONG] * 160 + [CLOSE]


def test_empty_continuation_frames_without_end_are_closed_with_4029() -> None:
    clock = Clock()
    protocol, transport = client(clock, messages_per_second=1000)  # not the rate: the fragments
    protocol.dataReceived(frame(b"", opcode=TEXT, fin=False))
    protocol.dataReceived(frame(b"", opcode=CONTINUATION, fin=False) * 15)  # 16 frames
    assert close_code(transport) is None
    protocol.dataReceived(frame(b"", opcode=CONTINUATION, fin=False))
    assert close_code(transport) == 4029
    assert b"a message in more than 16 frames" in close_reason(transport)
    assert protocol.factory.counters.bad_inputs == {"too_many_fragments": 1}


def test_a_message_in_16_fragments_is_read() -> None:
    clock = Clock()
    protocol, transport = client(clock)
    text = json.dumps({"type": "ping", "id": "fragmented"}).encode()
    pieces = [text[i:i + 2] for i in range(0, 32, 2)]
    pieces[-1] += text[32:]
    assert len(pieces) == 16
    protocol.dataReceived(frame(pieces[0], opcode=TEXT, fin=False))
    for piece in pieces[1:-1]:
        protocol.dataReceived(frame(piece, opcode=CONTINUATION, fin=False))
    protocol.dataReceived(frame(pieces[-1], opcode=CONTINUATION, fin=True))
    clock.advance(0)
    assert close_code(transport) is None
    assert {"type": "pong", "id": "fragmented"} in messages(transport)


def test_close_frames_count_too() -> None:
    # A close answered by Autobahn ends the connection; on one already
    # closing, more closes still cost a parse each, and count.
    clock = Clock()
    protocol, transport = client(clock, messages_per_second=20)
    protocol.dataReceived(frame(b"p", opcode=PING) * 160)
    protocol.dataReceived(frame(struct.pack("!H", 1000), opcode=CLOSE))
    assert close_code(transport) == 4029


def test_the_rest_of_a_flood_is_not_even_parsed() -> None:
    clock = Clock()
    protocol, transport = client(clock, messages_per_second=20)
    parsed: list[int] = []
    counted = protocol.frame_begins

    def counting(opcode: int) -> None:
        parsed.append(opcode)
        counted(opcode)

    protocol.frame_begins = counting  # type: ignore[method-assign]
    protocol.dataReceived(frame(b"p", opcode=PING) * 1000)  # one read: 1000 pings
    assert close_code(transport) == 4029
    assert len(parsed) == 161, "the 161st refused, the rest dropped unparsed"
    assert transport.producerState == "paused", "the socket is no longer read"
    protocol.dataReceived(frame(b"p", opcode=PING) * 10)
    assert len(parsed) == 161


# -- reconnecting does not start afresh ------------------------------------------------

def test_an_address_that_flooded_is_remembered_for_a_while() -> None:
    clock = Clock()
    flooded = FloodedAddresses(clock, memory=10.0, hold=1.0, most=2)
    flooded.flooded("192.0.2.1")
    assert flooded.hold_for("192.0.2.1") == 1.0
    assert flooded.hold_for("192.0.2.2") == 0.0
    clock.advance(10.0)
    assert flooded.hold_for("192.0.2.1") == 0.0
    for host in ("192.0.2.3", "192.0.2.4", "192.0.2.5"):  # at most 2 remembered
        flooded.flooded(host)
    assert [flooded.hold_for(h) for h in ("192.0.2.3", "192.0.2.4", "192.0.2.5")] == [
        0.0, 1.0, 1.0]


def test_a_flooder_that_reconnects_waits_before_it_is_read() -> None:
    clock = Clock()
    flooder, _ = client(clock, messages_per_second=20)
    factory = flooder.factory
    flooder.dataReceived(frame(b"p", opcode=PING) * 161)  # closed: 4029
    again, transport = client(clock, factory)
    assert transport.producerState == "paused", "not read for a second"
    neighbour, elsewhere = client(clock, factory, host="192.0.2.2")
    assert elsewhere.producerState == "producing", "another address is not held"
    clock.advance(1.0)
    assert transport.producerState == "producing"
    assert again.is_live and close_code(transport) is None
    clock.advance(10.0)  # forgotten after FLOOD_MEMORY
    _, later = client(clock, factory)
    assert later.producerState == "producing"


def test_a_held_client_that_leaves_cancels_its_release() -> None:
    clock = Clock()
    flooder, _ = client(clock, messages_per_second=20)
    flooder.dataReceived(frame(b"p", opcode=PING) * 161)
    held, _ = client(clock, flooder.factory)
    assert held._release in [call.func for call in clock.getDelayedCalls()]
    held.onClose(False, 1006, None)
    assert held._release not in [call.func for call in clock.getDelayedCalls()]
