"""Which channels the listener wants, which its connection LISTENs, and from where.

The listener's bookkeeping of channels, apart from the statements that
change it (partysense/db/listener.py runs the LISTENs and UNLISTENs):

- *wanted*: channels with subscribers (the hub's ``listen``/``unlisten``);
- *listening*: channels LISTENed on the current connection, emptied when it
  is lost, so that nobody takes a new connection's silence for "no changes";
- a *floor* per channel: the newest seq committed before its LISTEN, so that
  older changes are not handed to its subscribers (they have them from their
  snapshot); it is kept across a reconnect, so that what the channel missed
  while down is replayed to it;
- who waits for a channel's LISTEN (``whenListening``).
"""

from __future__ import annotations

from twisted.internet import defer

from partysense.db.errors import NotConnected


class ListenedChannels:
    """The channels' state; every method is cheap and runs no statement."""

    def __init__(self) -> None:
        self.wanted: set[str] = set()
        self.listening: set[str] = set()
        self._floor: dict[str, int] = {}
        self._waiters: dict[str, list[defer.Deferred[None]]] = {}

    def want(self, channel: str) -> None:
        self.wanted.add(channel)

    def unwant(self, channel: str) -> None:
        self.wanted.discard(channel)
        if channel not in self.listening:
            # Its last subscriber left before its LISTEN: nobody is waiting
            # for it any more, and no LISTEN will come to fire the waiters.
            for waiter in self._waiters.pop(channel, []):
                waiter.errback(NotConnected(f"{channel} is no longer wanted"))

    def to_listen(self) -> list[str]:
        return sorted(self.wanted - self.listening)

    def to_unlisten(self) -> list[str]:
        return sorted(self.listening - self.wanted)

    def wait(self, channel: str) -> defer.Deferred[None]:
        """Fires when ``channel`` is next marked listened."""
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.setdefault(channel, []).append(waiter)
        return waiter

    def listened(self, channel: str, floor: int | None = None) -> None:
        """``channel`` is LISTENed now; ``floor``: its new floor (None keeps the one it has)."""
        if floor is not None:
            self._floor[channel] = floor
        self.listening.add(channel)
        for waiter in self._waiters.pop(channel, []):
            waiter.callback(None)

    def keep_floor(self, channel: str, newest: int) -> None:
        """A channel listened before keeps its floor; a new one starts at ``newest``."""
        self._floor.setdefault(channel, newest)

    def unlistening(self, channel: str) -> None:
        """``channel``'s UNLISTEN is about to run.

        Not listening from now: a new subscriber's whenListening must wait
        for the LISTEN that follows, not snapshot between this UNLISTEN and
        that LISTEN.
        """
        self.listening.discard(channel)
        if channel not in self.wanted:
            self._floor.pop(channel, None)

    def new_connection(self) -> None:
        """A new connection LISTENs to nothing yet; unwanted channels' floors go."""
        self.listening = set()
        for channel in list(self._floor):
            if channel not in self.wanted:
                del self._floor[channel]

    def lost(self, why: str) -> None:
        """The connection is gone: nothing is listened, and every waiter fails."""
        self.listening = set()
        waiters, self._waiters = self._waiters, {}
        for channel_waiters in waiters.values():
            for waiter in channel_waiters:
                waiter.errback(NotConnected(why))

    def lower_floors(self, newest: int) -> None:
        """The log went back to ``newest``: no floor may stay above it."""
        for channel in self._floor:
            self._floor[channel] = min(self._floor[channel], newest)

    def passes(self, channel: str, seq: int) -> bool:
        """Change ``seq`` is for ``channel``'s subscribers: LISTENed, past its floor."""
        return channel in self.listening and seq > self._floor.get(channel, 0)

    def from_floor(self, channel: str, seq: int, last_seq: int) -> bool:
        """LISTENed from a floor at or before ``seq``, nothing read after ``seq``."""
        return (channel in self.listening and self._floor.get(channel, 0) <= seq
                and last_seq <= seq)

    def without_break(self, channel: str, seq: int) -> bool:
        """LISTENed, without a break, from a floor at or before ``seq``."""
        return channel in self.listening and self._floor.get(channel, seq + 1) <= seq
