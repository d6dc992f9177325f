"""Fan-out: one encoding per change and wire format, whatever the number of subscribers."""

from __future__ import annotations

from typing import Any

import pytest

from partysense.core.change import Change
from partysense.core.hub import Delivery, Hub
from tests.fakes import ListenedChannels

pytestmark = pytest.mark.logic


encoded: list[tuple[str, int]] = []


def subscriber_class(wire_format: str) -> type:
    class Recorder:
        def __init__(self) -> None:
            self.wire_format = wire_format
            self.frames: list[Any] = []

        @staticmethod
        def encode(delivery: Delivery) -> bytes:
            encoded.append((wire_format, delivery.seq))
            return f"{wire_format}:{delivery.seq}".encode()

        def deliver(self, delivery: Delivery, frame: Any) -> None:
            self.frames.append(frame)

    return Recorder


Seed, V2 = subscriber_class("seed"), subscriber_class("v2")


def change(seq: int) -> Change:
    return Change(event_id=3, seq=seq, committed_at=None, op="insert", vote_id=1, track_id=4,
                  up=True, prev=None, event_title="Party", track_name="Song", artist="Band",
                  truncated=False, payload=b"{}")


def test_each_change_is_encoded_once_per_wire_format_for_all_subscribers() -> None:
    encoded.clear()
    channels = ListenedChannels()
    hub = Hub(channels)
    seeds = [Seed() for _ in range(50)]
    v2s = [V2() for _ in range(20)]
    for subscriber in seeds + v2s:
        hub.subscribe("event_3", subscriber)
    assert channels.listened == ["event_3"]
    hub.publish("event_3", change(7))
    hub.publish("event_3", change(8))
    assert sorted(encoded) == [("seed", 7), ("seed", 8), ("v2", 7), ("v2", 8)]
    assert all(s.frames == [b"seed:7", b"seed:8"] for s in seeds)
    assert all(s.frames == [b"v2:7", b"v2:8"] for s in v2s)
    # The very same bytes object for everybody: nothing copied per subscriber.
    assert len({id(s.frames[0]) for s in seeds}) == 1
    assert hub.frames_sent == 140


def test_the_channel_is_unlistened_only_when_its_last_subscriber_of_any_format_leaves() -> None:
    channels = ListenedChannels()
    hub = Hub(channels)
    seed, v2 = Seed(), V2()
    hub.subscribe("event_3", seed)
    hub.subscribe("event_3", v2)
    hub.unsubscribe("event_3", seed)
    hub.unsubscribe("event_3", seed)  # twice: no harm
    assert channels.listened == ["event_3"] and hub.channels == ["event_3"]
    hub.unsubscribe("event_3", v2)
    assert channels.listened == [] and hub.channels == []


def test_a_subscriber_leaving_during_fan_out_neither_breaks_nor_misses_the_others() -> None:
    channels = ListenedChannels()
    hub = Hub(channels)
    survivors = [Seed() for _ in range(3)]

    class Leaver(Seed):  # type: ignore[misc, valid-type]
        def deliver(self, delivery: Delivery, frame: Any) -> None:
            hub.unsubscribe("event_3", self)
            raise RuntimeError("gone")

    hub.subscribe("event_3", survivors[0])
    hub.subscribe("event_3", Leaver())
    for subscriber in survivors[1:]:
        hub.subscribe("event_3", subscriber)
    hub.publish("event_3", change(9))
    assert [s.frames for s in survivors] == [[b"seed:9"]] * 3


def test_a_channel_lingers_listened_after_its_last_subscriber_leaves() -> None:
    """A client reconnecting, or cycling through events, finds its channel still
    LISTENed (and the event's kept read still exact): no LISTEN, no snapshot each time."""
    from twisted.internet.task import Clock

    clock, channels = Clock(), ListenedChannels()
    hub = Hub(channels, clock, linger=30.0, max_lingering=2)
    client = Seed()
    for _ in range(100):  # connect, subscribe, close, again
        hub.subscribe("event_3", client)
        hub.unsubscribe("event_3", client)
    assert channels.listened == ["event_3"] and hub.channels == []
    clock.advance(29)
    hub.subscribe("event_3", client)  # back in time: the timer is called off
    hub.unsubscribe("event_3", client)
    clock.advance(29)
    assert channels.listened == ["event_3"]
    clock.advance(1)
    assert channels.listened == []
    for event in (4, 5, 6):  # at most max_lingering: the oldest goes first
        hub.subscribe(f"event_{event}", client)
        hub.unsubscribe(f"event_{event}", client)
    assert channels.listened == ["event_5", "event_6"]
    clock.advance(30)
    assert channels.listened == [] and not clock.getDelayedCalls()
