"""The hub: which subscribers want which channel, and fan-out.

A channel's subscribers are kept in groups, one per wire format. A change is
encoded once per group, before its loop, and the same frame is handed to
every subscriber of the group. The hub also tells the listener when a channel
gets its first subscriber or loses its last one.

A channel that loses its last subscriber stays LISTENed for ``linger``
seconds (at most ``max_lingering`` such channels; the oldest go first). A
client that reconnects, or cycles through events, then finds the channel
still listened and the event's kept read still exact: its snapshot costs no
query (partysense/reads/sharedreads.py), where it cost a LISTEN, a snapshot and
an UNLISTEN each time (issue 15).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from partysense.core.change import Change
from partysense.core.interfaces import ChangeSource
from partysense.core.notice import Notice

LINGER = 30.0          # seconds a channel stays LISTENed after its last subscriber left
MAX_LINGERING = 1_000  # channels LISTENed that way at once


class Delivery:
    """One change on one channel, with its frames encoded at most once per wire format."""

    __slots__ = ("channel", "change", "seq", "_frames")

    def __init__(self, channel: str, change: Change) -> None:
        self.channel = channel
        self.change = change
        self.seq = change.seq  # read once per subscriber: an attribute, not a property
        self._frames: dict[str, Any] = {}

    def frame(self, wire_format: str, encode: Callable[[Delivery], Any]) -> Any:
        """The frame for ``wire_format``, encoding it on first use."""
        frame = self._frames.get(wire_format)
        if frame is None:
            frame = self._frames[wire_format] = encode(self)
        return frame


class Subscriber(Protocol):
    """What the hub needs of a subscription.

    ``wire_format`` names its group and stays the same while subscribed;
    ``encode`` makes the group's frame for a change: it is called on one
    member of the group, once per change, for everybody.
    """

    wire_format: str

    def encode(self, delivery: Delivery) -> Any: ...

    def deliver(self, delivery: Delivery, frame: Any) -> None: ...


class Noticed(Protocol):
    """A subscriber that takes notices (presence) besides changes: v2 and SSE.

    Optional: a group whose subscribers have no ``encode_notice`` (the seed
    dialect, which promises its clients vote payloads only) gets none.
    """

    def encode_notice(self, notice: Notice) -> Any: ...

    def notice(self, frame: Any) -> None: ...


class StartsOver(Protocol):
    """A subscriber that can take a fresh snapshot when the log starts over: v2 and SSE.

    Optional, as ``Noticed`` is: the seed dialect's clients cannot be told.
    """

    def start_over(self) -> None: ...


class Hub:
    """Channel name to subscribers, and the fan-out of changes to them.

    Observes ``channels`` (the listener) from construction on: every change
    it hands on reaches the subscribers of its channel.
    """

    log = Logger()

    def __init__(self, channels: ChangeSource, clock: IReactorTime | None = None,
                 linger: float = 0.0, max_lingering: int = MAX_LINGERING) -> None:
        self._channels = channels
        # channel -> wire format -> subscribers (a dict: ordered, O(1) removal)
        self._subscribers: dict[str, dict[str, dict[Subscriber, None]]] = {}
        self._clock = clock
        self._linger = linger if clock is not None else 0.0
        self._max_lingering = max_lingering
        self._lingering: dict[str, IDelayedCall] = {}  # channel -> its UNLISTEN, oldest first
        self.frames_sent = 0
        channels.observe(self.publish)

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        groups = self._subscribers.get(channel)
        if groups is None:
            groups = self._subscribers[channel] = {}
            lingering = self._lingering.pop(channel, None)
            if lingering is not None:
                lingering.cancel()  # still LISTENed
            else:
                self._channels.listen(channel)
        groups.setdefault(subscriber.wire_format, {})[subscriber] = None

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        groups = self._subscribers.get(channel)
        group = groups.get(subscriber.wire_format) if groups is not None else None
        if groups is None or group is None or subscriber not in group:
            return
        del group[subscriber]
        if not group:
            del groups[subscriber.wire_format]
        if not groups:
            del self._subscribers[channel]
            self._linger_on(channel)

    def _linger_on(self, channel: str) -> None:
        if self._clock is None or self._linger <= 0:
            self._channels.unlisten(channel)
            return
        while len(self._lingering) >= self._max_lingering:
            oldest = next(iter(self._lingering))
            self._lingering.pop(oldest).cancel()
            self._channels.unlisten(oldest)
        self._lingering[channel] = self._clock.callLater(self._linger, self._let_go, channel)

    def _let_go(self, channel: str) -> None:
        del self._lingering[channel]
        self._channels.unlisten(channel)

    @property
    def channels(self) -> list[str]:
        return sorted(self._subscribers)

    def subscriber_counts(self) -> dict[str, int]:
        """Channel to its number of subscribers (the admin port's /status)."""
        return {channel: sum(len(group) for group in groups.values())
                for channel, groups in self._subscribers.items()}

    def subscriber_count(self, channel: str) -> int:
        """The number of subscribers of one channel (presence: a new subscriber's count)."""
        groups = self._subscribers.get(channel)
        return sum(len(group) for group in groups.values()) if groups else 0

    def publish(self, channel: str, change: Change) -> None:
        """Hand one change to every subscriber of ``channel``."""
        groups = self._subscribers.get(channel)
        if not groups:
            return
        delivery = Delivery(channel, change)
        for group in list(groups.values()):
            # A copy: a subscriber may unsubscribe (close) while we deliver.
            subscribers = list(group)
            frame = delivery.frame(subscribers[0].wire_format, subscribers[0].encode)
            for subscriber in subscribers:
                try:
                    subscriber.deliver(delivery, frame)
                except Exception:
                    self.log.failure("Delivering to {subscriber} failed", subscriber=subscriber)
            self.frames_sent += len(subscribers)

    def start_over(self) -> None:
        """The log no longer continues what was delivered (the source said so):
        every subscriber that can takes a fresh snapshot."""
        subscribers = [subscriber for groups in self._subscribers.values()
                       for group in groups.values() for subscriber in group]
        self.log.warn("The change log started over: {count} subscriptions take a fresh "
                      "snapshot.", count=len(subscribers))
        for subscriber in subscribers:
            start_over = getattr(subscriber, "start_over", None)
            if start_over is None:
                continue
            try:
                start_over()
            except Exception:
                self.log.failure("Starting {subscriber} over failed", subscriber=subscriber)

    def notify(self, channel: str, notice: Notice) -> int:
        """Hand a notice to every subscriber of ``channel`` that takes notices,
        encoded once per group; returns how many it reached."""
        groups = self._subscribers.get(channel)
        if not groups:
            return 0
        reached = 0
        for group in list(groups.values()):
            subscribers = list(group)
            if getattr(subscribers[0], "encode_notice", None) is None:
                continue
            frame = notice.frame(subscribers[0].wire_format,
                                 cast(Noticed, subscribers[0]).encode_notice)
            for subscriber in subscribers:
                try:
                    cast(Noticed, subscriber).notice(frame)
                except Exception:
                    self.log.failure("Noticing {subscriber} failed", subscriber=subscriber)
            reached += len(subscribers)
        return reached  # counted apart from change frames (partysense_presence_notices)
