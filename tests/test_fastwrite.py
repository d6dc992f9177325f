"""Frames of one reactor turn leave together, in order (partysense/wire/fastwrite.py)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from partysense.adapters.twisted_adapter import write_now
from partysense.wire.fastwrite import TurnWriter

pytestmark = pytest.mark.logic


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def test_frames_of_one_turn_are_one_write_per_client_in_order() -> None:
    clock = Clock()
    writer = TurnWriter(clock)
    one, two = CountingTransport(), CountingTransport()
    for frame in (b"a", b"b", b"c"):
        writer.write(one, frame)
    writer.write(two, b"x")
    assert one.value() == b"" and two.value() == b""
    clock.advance(0)
    assert (one.value(), one.writes) == (b"abc", 1)
    assert (two.value(), two.writes) == (b"x", 1)
    assert writer.sends == 2
    writer.write(one, b"d")
    clock.advance(0)
    assert (one.value(), one.writes) == (b"abcd", 2)


def test_the_end_of_a_batch_sends_its_frames_at_once_and_leaves_no_turn_behind() -> None:
    clock = Clock()
    writer = TurnWriter(clock)
    one, two = CountingTransport(), CountingTransport()
    for frame in (b"a", b"b"):
        writer.write(one, frame)
    writer.write(two, b"x")
    writer.end_of_batch()
    assert (one.value(), one.writes, two.value()) == (b"ab", 1, b"x")
    assert clock.getDelayedCalls() == [], "the turn's timer is cancelled, not left to fire"
    writer.write(one, b"c")  # the next batch: a timer again, and the same end
    assert len(clock.getDelayedCalls()) == 1
    writer.end_of_batch()
    assert (one.value(), one.writes) == (b"abc", 2)
    writer.end_of_batch()  # nothing waiting: nothing to do
    assert one.writes == 2


def test_in_a_batch_of_one_vote_each_frame_goes_out_as_it_is_made() -> None:
    clock = Clock()
    writer = TurnWriter(clock)
    one, two = CountingTransport(), CountingTransport()
    writer.begin_batch(2)  # one vote: its event's channel and the firehose
    writer.write(one, b"a")
    assert (one.value(), one.writes) == (b"a", 1), "sent before the fan-out goes on"
    writer.write(two, b"x")
    writer.write(one, b"b")  # a client on both channels: its second frame, at once too
    assert (one.value(), two.value(), writer.sends) == (b"ab", b"x", 3)
    assert clock.getDelayedCalls() == [], "nothing held, so no turn to wait for"
    writer.end_of_batch()
    writer.write(one, b"c")  # after the batch: held for the turn again
    assert one.value() == b"ab"
    clock.advance(0)
    assert one.value() == b"abc"


def test_a_bigger_batch_is_coalesced_and_a_held_client_keeps_its_order() -> None:
    clock = Clock()
    writer = TurnWriter(clock)
    one = CountingTransport()
    writer.begin_batch(3)  # the daemon is behind: frames share a send()
    for frame in (b"a", b"b", b"c"):
        writer.write(one, frame)
    assert one.value() == b""
    writer.end_of_batch()
    assert (one.value(), one.writes) == (b"abc", 1)
    writer.write(one, b"d")  # held (outside any batch) when the next batch begins
    writer.begin_batch(1)
    writer.write(one, b"e")
    assert one.value() == b"abc", "not ahead of the frame it holds for the client"
    writer.end_of_batch()
    assert (one.value(), one.writes) == (b"abcde", 2)


def test_with_a_write_delay_frames_wait_whatever_the_batches() -> None:
    clock = Clock()
    writer = TurnWriter(clock, delay=0.005)
    transport = CountingTransport()
    writer.begin_batch(1)  # even a batch of one vote
    writer.write(transport, b"a")
    writer.end_of_batch()
    assert transport.value() == b""
    clock.advance(0.005)
    assert transport.value() == b"a"


def test_flush_one_sends_a_clients_frames_before_what_follows() -> None:
    clock = Clock()
    writer = TurnWriter(clock)
    transport = CountingTransport()
    writer.write(transport, b"change")
    writer.flush_one(transport)
    transport.write(b"close")
    clock.advance(0)
    assert transport.value() == b"changeclose"


def test_write_now_on_a_real_socket_sends_everything_once() -> None:
    from twisted.internet import reactor, tcp

    left, right = socket.socketpair()
    left.setblocking(False)
    port = SimpleNamespace(_realPortNumber=1)  # all tcp.Server wants of its port
    server = tcp.Server(left, Protocol(), ("127.0.0.1", 1), port, 1, reactor)
    try:
        write_now(server, b"frame-1")
        write_now(server, b"frame-2")
        assert not server.dataBuffer and not server._tempDataLen  # nothing left to the reactor
        right.settimeout(5)
        received = b""
        while len(received) < 14:
            received += right.recv(100)
        assert received == b"frame-1frame-2"
    finally:
        server.stopReading()
        left.close()
        right.close()


def test_with_a_write_delay_frames_wait_that_long_then_leave_in_one_send() -> None:
    clock = Clock()
    writer = TurnWriter(clock, delay=0.020)
    one, two = CountingTransport(), CountingTransport()
    writer.write(one, b"a")
    clock.advance(0.010)
    writer.write(one, b"b")
    writer.write(two, b"x")
    clock.advance(0.009)
    assert one.value() == b"" and two.value() == b""  # still within the 20 ms
    clock.advance(0.001)
    assert (one.value(), one.writes) == (b"ab", 1)
    assert (two.value(), two.writes) == (b"x", 1)
    # The next frame starts a new window: none waits longer than the delay.
    writer.write(two, b"y")
    clock.advance(0.019)
    assert two.value() == b"x"
    clock.advance(0.001)
    assert (two.value(), two.writes) == (b"xy", 2)
    assert not clock.getDelayedCalls()  # one timer for the writer, none left


def test_a_write_delay_still_sends_a_full_buffer_at_once() -> None:
    clock = Clock()
    writer = TurnWriter(clock, flush_bytes=10, delay=0.5)
    transport = CountingTransport()
    writer.write(transport, b"12345")
    assert transport.value() == b""
    writer.write(transport, b"67890")
    assert (transport.value(), transport.writes) == (b"1234567890", 1)
    clock.advance(0.5)
    assert transport.writes == 1  # nothing was left to send
