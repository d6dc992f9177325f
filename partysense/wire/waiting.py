"""Connections accepted and not yet upgraded: bounded per address and in all.

A connection is an open file from accept() on, long before it is a WebSocket
or an SSE stream that --max-connections-per-ip counts. 20,000 idle sockets
from two addresses (not a byte sent) filled the open-files limit, and
/healthz from a third got an empty reply ("EMFILE recovery" in the log): the
balancer took the daemon out of rotation.

So every connection is counted from accept (``GuardedSite.buildProtocol``):

- per address, together with the address's upgraded clients, against
  --max-connections-per-ip: past it a new one is refused (429);
- in all, against a budget below the open-files limit
  (``limits.waiting_budget``): when it is full, the connection that has
  waited longest and is not being answered is closed (408) for the
  newcomer. An attacker's idle sockets are the oldest, so they go; a
  newcomer, the balancer's /healthz included, is served.

This module only keeps the books; the site opens and closes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from partysense.core.addresses import network_of


def nothing_upgraded(address: str) -> int:
    return 0


class Waiting:
    """The connections waiting to upgrade, oldest first, counted per address.

    ``max_per_address`` None: no bound per address (behind --trusted-proxies
    every connection comes from a proxy; the budget still holds).
    ``upgraded_from(address)``: that address's upgraded clients.
    """

    def __init__(self, budget: int, max_per_address: int | None = None,
                 upgraded_from: Callable[[str], int] = nothing_upgraded) -> None:
        self.budget = budget
        self.max_per_address = max_per_address
        self._upgraded_from = upgraded_from
        # Each waiting connection and its address (None: an address without a
        # host, a Unix socket), in the order they came.
        self._order: OrderedDict[Hashable, str | None] = OrderedDict()
        self._per_address: dict[str, int] = {}
        # Requests being answered per connection: such a connection is ours
        # to finish, not idle, and never closed for a newcomer.
        self._busy: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, connection: Hashable) -> bool:
        return connection in self._order

    def from_address(self, address: str) -> int:
        """Connections from ``address`` (its /64 for IPv6), waiting and upgraded."""
        return self._per_address.get(network_of(address), 0) + self._upgraded_from(address)

    def too_many_from(self, address: str | None) -> bool:
        """Would one more connection from ``address`` pass --max-connections-per-ip?"""
        if address is None or self.max_per_address is None:
            return False
        return self.from_address(address) >= self.max_per_address

    def is_full(self) -> bool:
        return len(self._order) >= self.budget

    def enter(self, connection: Hashable, address: str | None) -> None:
        address = None if address is None else network_of(address)
        self._order[connection] = address
        if address is not None:
            self._per_address[address] = self._per_address.get(address, 0) + 1

    def leave(self, connection: Hashable) -> bool:
        """``connection`` upgraded or closed; False if it was not waiting."""
        if connection not in self._order:
            return False
        address = self._order.pop(connection)
        self._busy.pop(connection, None)
        if address is not None:
            left = self._per_address.pop(address, 1) - 1
            if left:
                self._per_address[address] = left
        return True

    def busy(self, connection: Hashable) -> None:
        """A whole request came on ``connection``: it is being answered."""
        if connection in self._order:
            self._busy[connection] = self._busy.get(connection, 0) + 1

    def idle(self, connection: Hashable) -> None:
        """A request on ``connection`` was answered (or its connection lost)."""
        count = self._busy.pop(connection, 0) - 1
        if count > 0:
            self._busy[connection] = count

    def take_oldest_idle(self) -> Hashable | None:
        """The connection that has waited longest and is not being answered,
        taken out of the books (the caller closes it); None if all are busy."""
        for _ in range(len(self._order)):
            connection = next(iter(self._order))
            if connection not in self._busy:
                self.leave(connection)
                return connection
            # Being answered: passed over, and not looked at again before the rest.
            self._order.move_to_end(connection)
        return None
