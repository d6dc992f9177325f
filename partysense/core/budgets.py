"""What one client address may cost us, whatever it reconnects: token buckets per address
(an IPv6 address counts as its /64: partysense/core/addresses.py).

A connection's own limits (partysense/dialects/v2.py: a burst of subscribes, then one
a second) start afresh with every connection, so a client that reconnects in
a loop had none: 16 connections × 40 subscribes × a close, over and over,
made thousands of lookups and snapshots a second. Here the budget belongs to
the address (the forwarded one behind --trusted-proxies), and a new
connection draws from what the address has left.

Sized for a venue: its phones share one NAT address, and after a Wi-Fi
outage --max-connections-per-ip of them (1024) reconnect within seconds.
Each may subscribe twice at once (a burst of twice that), then the address
gets a tenth of it a second: every phone resubscribes within 10 s.

Memory is bounded: an address whose bucket has filled up again is the same
as one never seen, and is forgotten; past ``MAX_ADDRESSES`` the ones least
recently seen are forgotten first (that gives them a full budget again, but
only an attacker with that many addresses can make it happen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from partysense.core.addresses import network_of

MAX_ADDRESSES = 50_000   # addresses whose buckets are remembered at once

# A venue's NAT address: --max-connections-per-ip phones (re)connecting at once.
VENUE_PHONES = 1024
# Per phone of such a venue: subscribes at once (the address then gets a
# tenth of a phone's a second), and rows of change log replayed (a v2 resume,
# an SSE Last-Event-ID) at once and a second. 1024 phones: 2,048 subscribes,
# then 102 a second; 204,800 rows (each phone resuming 200 changes back),
# then 10,240 a second (a full replay, ~60 ms of daemon CPU, a second).
SUBSCRIBES_PER_PHONE = 2
REPLAY_ROWS_PER_PHONE = 200
REPLAY_ROWS_PER_PHONE_SECOND = 10
# Unknown event ids that may make the directory look again (partysense/reads/events.py).
MISSES_BURST = 20
MISSES_PER_SECOND = 1.0


class AddressBuckets:
    """One token bucket per address: ``burst`` tokens, refilled at ``rate`` a second.

    ``now`` is handed in (the caller's clock), so the arithmetic needs no
    reactor. A bucket may go into debt (:meth:`charge`, for a cost known
    only afterwards): the address then waits until it is paid back.
    """

    def __init__(self, rate: float, burst: float, max_addresses: int = MAX_ADDRESSES) -> None:
        self.rate = rate
        self.burst = burst
        self._max_addresses = max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (level, at)
        self.refused = 0

    def level(self, address: str, now: float) -> float:
        """The tokens ``address`` has at ``now``."""
        level, at = self._buckets.get(network_of(address), (self.burst, now))
        return min(self.burst, level + max(0.0, now - at) * self.rate)

    def take(self, address: str, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if the address has them; False (nothing spent) if not."""
        level = self.level(address, now)
        if level < min(cost, self.burst):
            self.refused += 1
            return False
        self._set(address, level - cost, now)
        return True

    def charge(self, address: str, now: float, cost: float) -> None:
        """Spend ``cost`` whatever is left (a negative cost refunds); at most
        one burst of debt."""
        self._set(address, max(-self.burst, self.level(address, now) - cost), now)

    def retry_after(self, address: str, now: float, cost: float = 1.0) -> int:
        """Whole seconds until ``address`` has ``cost`` tokens again."""
        missing = min(cost, self.burst) - self.level(address, now)
        return max(1, math.ceil(missing / self.rate)) if self.rate > 0 else 60

    def __len__(self) -> int:
        return len(self._buckets)

    def _set(self, address: str, level: float, now: float) -> None:
        address = network_of(address)  # an IPv6 client's /64 is one budget
        self._buckets.pop(address, None)  # re-inserted last: the most recently seen
        if level >= self.burst:
            return  # full: as good as never seen
        if len(self._buckets) >= self._max_addresses:
            self._forget(now)
        self._buckets[address] = (level, now)

    def _forget(self, now: float) -> None:
        for address in [a for a in self._buckets if self.level(a, now) >= self.burst]:
            del self._buckets[address]
        while len(self._buckets) >= self._max_addresses:
            del self._buckets[next(iter(self._buckets))]  # the least recently seen


@dataclass(frozen=True)
class Budgets:
    """Every budget one address draws from (docs/security.md, "per address")."""

    subscribes: AddressBuckets
    replay_rows: AddressBuckets
    misses: AddressBuckets


def budgets_for(venue_phones: int = VENUE_PHONES) -> Budgets:
    """Budgets for a venue of ``venue_phones`` (--max-connections-per-ip) per address."""
    return Budgets(
        subscribes=AddressBuckets(SUBSCRIBES_PER_PHONE * venue_phones / 20,
                                  SUBSCRIBES_PER_PHONE * venue_phones),
        replay_rows=AddressBuckets(REPLAY_ROWS_PER_PHONE_SECOND * venue_phones,
                                   REPLAY_ROWS_PER_PHONE * venue_phones),
        misses=AddressBuckets(MISSES_PER_SECOND, MISSES_BURST))


def subscribe_refusal(budgets: Budgets, address: str, now: float) -> str | None:
    """Spend one of ``address``'s subscribes; None, or why it may not subscribe now."""
    bucket = budgets.subscribes
    if bucket.take(address, now):
        return None
    return (f"more than {bucket.burst:g} subscribes from your address at once, then "
            f"{bucket.rate:g} a second; retry in {bucket.retry_after(address, now)} s")


def replay_refusal(budgets: Budgets, address: str, now: float, rows: int) -> str | None:
    """Reserve ``rows`` (the most a replay may send) of ``address``'s replay
    budget; None, or why it may not catch up now. :func:`replayed` settles it."""
    bucket = budgets.replay_rows
    if bucket.take(address, now, rows):
        return None
    return (f"more than {bucket.burst:g} changes replayed to your address at once, then "
            f"{bucket.rate:g} a second; retry in {bucket.retry_after(address, now, rows)} s")


def replayed(budgets: Budgets, address: str, now: float, reserved: int, rows: int) -> None:
    """A replay sent ``rows`` of the ``reserved``: the rest goes back to the address."""
    budgets.replay_rows.charge(address, now, rows - reserved)
