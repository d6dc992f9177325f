"""A client's way out and the order of its frames (partysense/wire/sink.py)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from partysense.wire.fastwrite import TurnWriter
from partysense.wire.sink import Sink

pytestmark = pytest.mark.logic


class Written(StringTransport):
    """Records each write() separately: one entry per send()."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


Setup = tuple[Sink, Written, Clock, list[str]]


def sink_on(detour: list[bytes] | None = None, max_bytes: int = 1000) -> Setup:
    """A sink on a fake socket; ``detour``: where Autobahn's queue takes frames."""
    clock, transport, overflowed = Clock(), Written(), []
    taken = (lambda frame: detour.append(frame) or True) if detour is not None else None
    sink = Sink(transport, TurnWriter(clock), max_bytes, lambda: True,
                lambda: overflowed.append("over"), taken)
    transport.registerProducer(sink.outbox, True)
    return sink, transport, clock, overflowed


def test_a_turns_frames_leave_in_one_send_and_are_counted() -> None:
    sink, transport, clock, _ = sink_on()
    sink.outbox.send(b"one")
    sink.outbox.send(b"two")
    assert transport.writes == []
    clock.advance(0)
    assert transport.writes == [b"onetwo"] and sink.bytes_sent == 6


def test_flush_sends_what_waits_before_something_written_around_the_writer() -> None:
    sink, transport, clock, _ = sink_on()
    sink.outbox.send(b"change")
    sink.flush()
    transport.write(b"close")  # Autobahn's close frame, the last chunk of a stream
    clock.advance(0)
    assert transport.writes == [b"change", b"close"]


def test_while_the_socket_is_full_frames_wait_in_order_then_follow_the_turns_frames() -> None:
    sink, transport, clock, overflowed = sink_on(max_bytes=8)
    sink.outbox.send(b"a")
    sink.outbox.pauseProducing()
    sink.outbox.send(b"bb")
    sink.outbox.send(b"ccc")
    assert sink.outbox.waiting == 2 and not overflowed
    sink.outbox.resumeProducing()  # a backlog goes into the transport at once, after "a"
    assert transport.writes == [b"a", b"bb", b"ccc"]
    sink.outbox.pauseProducing()
    sink.outbox.send(b"dddd")
    sink.outbox.send(b"eeeee")
    assert overflowed == ["over"]  # 9 bytes waiting, over 8
    clock.advance(0)


def test_a_frame_taken_by_the_detour_is_neither_written_nor_counted_here() -> None:
    autobahn: list[bytes] = []
    sink, transport, clock, _ = sink_on(detour=autobahn)
    sink.outbox.send(b"behind autobahn")
    clock.advance(0)
    assert autobahn == [b"behind autobahn"] and transport.writes == [] and sink.bytes_sent == 0
