"""The hub: which WebSocket protocols want which channel, and fan-out.

A change is encoded once per wire format and the same prepared frame is
sent to every subscriber of the channel. The hub also tells the listener
when a channel gets its first subscriber or loses its last one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from autobahn.websocket.protocol import PreparedMessage
from twisted.logger import Logger


class Listener(Protocol):
    def listen(self, channel: str) -> None: ...
    def unlisten(self, channel: str) -> None: ...


class Subscriber(Protocol):
    """What the hub needs of a WebSocket protocol."""

    def deliver(self, change: Change) -> None: ...


def _prepare(payload: bytes) -> PreparedMessage:
    # No compression: permessage-deflate is off, and it would defeat the
    # point of preparing a frame once for everybody.
    return PreparedMessage(payload, False, False, True)


class Change:
    """One vote change on one channel, with its frames encoded at most once."""

    __slots__ = ("channel", "seq", "payload", "_frames")

    def __init__(self, channel: str, seq: int, payload: str) -> None:
        self.channel = channel
        self.seq = seq
        self.payload = payload
        self._frames: dict[str, PreparedMessage] = {}

    def frame(self, wire_format: str, encode: Callable[[Change], bytes]) -> PreparedMessage:
        """The prepared frame for ``wire_format``, encoding it on first use."""
        prepared = self._frames.get(wire_format)
        if prepared is None:
            prepared = self._frames[wire_format] = _prepare(encode(self))
        return prepared


class Hub:
    """Channel name to subscribers, and the fan-out of changes to them."""

    log = Logger()

    def __init__(self) -> None:
        self._subscribers: dict[str, dict[Subscriber, None]] = {}
        self.listener: Listener | None = None
        self.frames_sent = 0

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is None:
            subscribers = self._subscribers[channel] = {}
            if self.listener is not None:
                self.listener.listen(channel)
        subscribers[subscriber] = None

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is None or subscriber not in subscribers:
            return
        del subscribers[subscriber]
        if not subscribers:
            del self._subscribers[channel]
            if self.listener is not None:
                self.listener.unlisten(channel)

    def subscriber_count(self, channel: str) -> int:
        return len(self._subscribers.get(channel, ()))

    @property
    def channels(self) -> list[str]:
        return sorted(self._subscribers)

    def publish(self, channel: str, seq: int, payload: str) -> None:
        """Hand one change to every subscriber of ``channel``."""
        subscribers = self._subscribers.get(channel)
        if not subscribers:
            return
        change = Change(channel, seq, payload)
        # A copy: a subscriber may unsubscribe (close) while we deliver.
        for subscriber in list(subscribers):
            try:
                subscriber.deliver(change)
            except Exception:
                self.log.failure("Delivering to {subscriber} failed", subscriber=subscriber)
        self.frames_sent += len(subscribers)
