"""Log lines that anyone outside can cause, at a bounded rate.

A forged notification or a client's bad request must be logged, but a flood
of them must not become a flood of log lines (the issue that asked for this
saw 3 MB of log in 6 s). :class:`Quiet` lets one line through per
``interval`` seconds per key, and the next line that gets through says how
many were held back meanwhile.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from partysense.core.addresses import network_of

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


OTHERS = "(other addresses)"  # the key of every address past MAX_KEYS in one window


def client_key(address: str) -> str:
    """What one client is: an IPv4 address, or an IPv6 address's /64 (one host is
    given a whole /64 and may use any address in it)."""
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network(f"{address.strip('[]')}/64", strict=False))
    except ValueError:
        return address


class PerAddress:
    """At most ``burst`` lines per address every ``interval`` seconds; past it, the
    lines are dropped and counted by kind, and once the interval is over one
    summary line per address says how many of each were dropped.

    An address's budget is kept by the address (an IPv6 one's by its /64:
    :func:`client_key`), not the connection, so that reconnecting, or moving
    to the next address of one's /64, does not reset it. Addresses are bounded too: past
    ``max_keys`` in one interval, the rest share one budget (:data:`OTHERS`).
    """

    def __init__(self, log: Logger, clock: IReactorTime, burst: int, interval: float = 10.0,
                 what: str = "lines", max_keys: int = MAX_KEYS) -> None:
        self._log = log
        self._clock = clock
        self._burst = burst
        self._interval = interval
        self._what = what
        self._max_keys = max_keys
        self._window_ends = 0.0
        self._used: dict[str, int] = {}            # lines let through this interval
        self._dropped: dict[str, dict[str, int]] = {}  # address -> kind -> count
        self._summary: Any = None                  # the pending summary call
        self.dropped = 0

    def allow(self, address: str, kind: str) -> bool:
        """May a line of ``kind`` about ``address`` be logged now? False: it was counted."""
        address = network_of(address)  # an IPv6 client's /64 is one address here
        now = self._clock.seconds()
        if now >= self._window_ends:
            self._window_ends = now + self._interval
            self._used.clear()
        address = client_key(address)
        if address not in self._used and len(self._used) >= self._max_keys:
            address = OTHERS
        used = self._used.get(address, 0)
        if used < self._burst:
            self._used[address] = used + 1
            return True
        kinds = self._dropped.setdefault(address, {})
        kinds[kind] = kinds.get(kind, 0) + 1
        self.dropped += 1
        if self._summary is None:
            self._summary = self._clock.callLater(self._window_ends - now, self.summarize)
        return False

    def summarize(self) -> None:
        """One line per address whose lines were dropped since the last summary."""
        self._summary = None
        dropped, self._dropped = self._dropped, {}
        for address, kinds in dropped.items():
            self._log.info(
                "{count} {what} about {address} not logged in the last {interval:g} s "
                "(at most {burst} per address): {kinds}", count=sum(kinds.values()),
                what=self._what, address=address, interval=self._interval, burst=self._burst,
                kinds=", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items())),
                dropped=kinds)

    def stop(self) -> None:
        """Log what is pending now and cancel the timer (at shutdown)."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        if self._dropped:
            self.summarize()
        self._summary = None
