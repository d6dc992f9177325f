"""Who a change source hands its changes to, and who hears of its batches.

The listener's half of :class:`~partysense.core.interfaces.ChangeSource`
that involves no database: the observers (the hub first), and the callbacks
around each batch of notifications that the client writer uses to send a
batch's frames together (partysense/wire/fastwrite.py), and those told when
the log starts over.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from partysense.core.change import Change
from partysense.core.interfaces import Observer


class Fanout:
    """Observers, called in the order they came; one failing does not stop the others."""

    def __init__(self, log: Logger) -> None:
        self.observers: list[Observer] = []
        self.before: list[Callable[[int], None]] = []
        self.after: list[Callable[[], None]] = []
        self.start_over: list[Callable[[], None]] = []
        self._log = log

    def batch_starts(self, count: int) -> None:
        for callback in self.before:
            callback(count)

    def batch_done(self) -> None:
        # Read at each batch, not copied at connect: a callback registered
        # while connected is called from the next batch on.
        for callback in self.after:
            callback()

    def started_over(self) -> None:
        """The log does not continue what was handed on: tell everyone who asked."""
        for callback in self.start_over:
            try:
                callback()
            except Exception:
                self._log.failure("Starting over after the change log's reset failed")

    def hand(self, channel: str, change: Change) -> None:
        for observer in self.observers:
            try:
                observer(channel, change)
            except Exception:
                self._log.failure("Delivering change {seq} on {channel} failed",
                                  seq=change.seq, channel=channel)
