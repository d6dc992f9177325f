"""Log lines that anyone outside can cause, at a bounded rate.

A forged notification or a client's bad request must be logged, but a flood
of them must not become a flood of log lines (the issue that asked for this
saw 3 MB of log in 6 s). :class:`Quiet` lets one line through per
``interval`` seconds per key, and the next line that gets through says how
many were held back meanwhile.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

MAX_KEYS = 10_000  # one entry per key: bounded too


class Quiet:
    """At most one line per ``interval`` seconds per key, with a count of the rest."""

    def __init__(self, log: Logger, clock: IReactorTime, interval: float = 10.0) -> None:
        self._log = log
        self._clock = clock
        self._interval = interval
        self._next: dict[Any, float] = {}
        self._held: dict[Any, int] = {}
        self.held_back = 0

    def warn(self, key: Any, format: str, **fields: Any) -> None:
        self._emit(self._log.warn, key, format, fields)

    def info(self, key: Any, format: str, **fields: Any) -> None:
        self._emit(self._log.info, key, format, fields)

    def _emit(self, emit: Any, key: Any, format: str, fields: dict[str, Any]) -> None:
        now = self._clock.seconds()
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            self.held_back += 1
            return
        if len(self._next) >= MAX_KEYS:
            self._forget_old(now)
        self._next[key] = now + self._interval
        held = self._held.pop(key, 0)
        if held:
            format += " ({held} more like it in the last {interval:g} s not logged)"
        emit(format, held=held, interval=self._interval, **fields)

    def _forget_old(self, now: float) -> None:
        for key in [key for key, until in self._next.items() if until <= now]:
            del self._next[key]
            self._held.pop(key, None)
        if len(self._next) >= MAX_KEYS:  # all recent: start over rather than grow
            self._next.clear()
            self._held.clear()
