"""Hold live changes until caught up, then pass only those past the cursor.

A v2 subscription (partysense/dialects/v2.py) and an SSE stream
(partysense/web/sse.py) both subscribe to the hub *before* reading their
snapshot or replay, so that no change committed meanwhile is lost. Until that
read is out, live changes wait here (at most ``MAX_PENDING``: a client that
needs more is not keeping up); then ``caught_up(cursor)`` lets through, in
order, every change whose ``seq`` is past the cursor, and no other: the read
and the live changes join with no gap and no duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from partysense.core.change import Change
from partysense.core.hub import Delivery

# Live changes held while a snapshot or replay is being sent.
MAX_PENDING = 20000


def past(cursor: int, changes: Sequence[Change]) -> tuple[list[Change], int]:
    """The replayed ``changes`` after ``cursor``, and the cursor once they are out."""
    after = [change for change in changes if change.seq > cursor]
    return after, (after[-1].seq if after else cursor)


class CatchUp:
    """One subscriber's gate: the hub hands it changes (``deliver``), it hands on
    their frames (``send``) once caught up; ``overflow`` when too many wait."""

    __slots__ = ("cursor", "active", "_pending", "_send", "_overflow", "_max_pending")

    def __init__(self, send: Callable[[Any], None], overflow: Callable[[], None],
                 max_pending: int = MAX_PENDING) -> None:
        self.cursor: int | None = None  # None: the snapshot or replay is not out yet
        self.active = True
        self._pending: list[tuple[Delivery, Any]] = []
        self._send = send
        self._overflow = overflow
        self._max_pending = max_pending

    def deliver(self, delivery: Delivery, frame: Any) -> None:
        """A live change: held, sent, or (at or before the cursor) dropped."""
        if not self.active:
            return
        if self.cursor is None:
            self._pending.append((delivery, frame))
            if len(self._pending) > self._max_pending:
                self._overflow()
        elif delivery.seq > self.cursor:
            self.cursor = delivery.seq
            self._send(frame)

    def caught_up(self, cursor: int) -> None:
        """The read is out up to ``cursor``: what waited goes now, then every change."""
        self.cursor = cursor
        pending, self._pending = self._pending, []
        for delivery, frame in pending:
            self.deliver(delivery, frame)

    def stop(self) -> None:
        """Nothing more is sent (unsubscribed, closed); what waited is let go."""
        self.active = False
        self._pending = []
