"""The hub: which subscribers want which channel, and fan-out.

A change is encoded once per wire format and the same frame is sent to every
subscriber of the channel. The hub also tells the listener when a channel
gets its first subscriber or loses its last one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import Logger

from partysense.change import Change


class Channels(Protocol):
    """What the hub needs of the listener."""

    def listen(self, channel: str) -> None: ...
    def unlisten(self, channel: str) -> None: ...
    def observe(self, observer: Callable[[str, Change], None]) -> None: ...


class Delivery:
    """One change on one channel, with its frames encoded at most once per wire format."""

    __slots__ = ("channel", "change", "_frames")

    def __init__(self, channel: str, change: Change) -> None:
        self.channel = channel
        self.change = change
        self._frames: dict[str, Any] = {}

    @property
    def seq(self) -> int:
        return self.change.seq

    def frame(self, wire_format: str, encode: Callable[[Delivery], Any]) -> Any:
        """The frame for ``wire_format``, encoding it on first use."""
        frame = self._frames.get(wire_format)
        if frame is None:
            frame = self._frames[wire_format] = encode(self)
        return frame


class Subscriber(Protocol):
    """What the hub needs of a subscription."""

    def deliver(self, delivery: Delivery) -> None: ...


class Hub:
    """Channel name to subscribers, and the fan-out of changes to them.

    Observes ``channels`` (the listener) from construction on: every change
    it hands on reaches the subscribers of its channel.
    """

    log = Logger()

    def __init__(self, channels: Channels) -> None:
        self._channels = channels
        self._subscribers: dict[str, dict[Subscriber, None]] = {}
        self.frames_sent = 0
        channels.observe(self.publish)

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is None:
            subscribers = self._subscribers[channel] = {}
            self._channels.listen(channel)
        subscribers[subscriber] = None

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is None or subscriber not in subscribers:
            return
        del subscribers[subscriber]
        if not subscribers:
            del self._subscribers[channel]
            self._channels.unlisten(channel)

    @property
    def channels(self) -> list[str]:
        return sorted(self._subscribers)

    def publish(self, channel: str, change: Change) -> None:
        """Hand one change to every subscriber of ``channel``."""
        subscribers = self._subscribers.get(channel)
        if not subscribers:
            return
        delivery = Delivery(channel, change)
        # A copy: a subscriber may unsubscribe (close) while we deliver.
        for subscriber in list(subscribers):
            try:
                subscriber.deliver(delivery)
            except Exception:
                self.log.failure("Delivering to {subscriber} failed", subscriber=subscriber)
        self.frames_sent += len(subscribers)
