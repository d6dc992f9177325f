"""Every open client of the public port, WebSocket or SSE stream: one registry.

Built by the service assembly (partysense/tap.py) and handed to the WebSocket
factory (partysense/wire/protocol.py) and to the SSE streams
(partysense/web/sse.py), so that both kinds count against the same
--max-clients and --max-connections-per-ip, share the per-turn writer, the
counters, the per-address log limits and the access log, and are closed
together at shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.logger import Logger

from partysense.core import errors
from partysense.core.addresses import network_of
from partysense.core.errors import ClientError
from partysense.core.quietlog import Quiet
from partysense.dialects.dialect import ClientCounters
from partysense.wire.accesslog import AccessLog
from partysense.wire.fastwrite import TurnWriter
from partysense.wire.origins import AllowedOrigins

# The namespace of these lines from before the registry (LiveProtocol's logger).
CLIENTS_LOG = Logger(namespace="partysense.wire.protocol.LiveProtocol")


@dataclass
class Limits:
    """What one client may do; the defaults suit a party of thousands of phones."""

    max_clients: int = 100_000
    max_subscriptions: int = 32
    max_message_bytes: int = 4096
    messages_per_second: float = 20.0
    max_queue_bytes: int = 1024 * 1024
    ping_interval: float = 30.0
    allowed_origins: tuple[str, ...] = ()
    # A venue's guests share one public address behind its NAT: this bounds
    # one machine opening thousands of sockets, not a party.
    max_connections_per_ip: int = 1024
    # Requests read but not yet answered (a subscribe waits for the database):
    # room for a page subscribing to its 32 events at once, not for a client
    # that keeps sending while the database is slow.
    max_pending_requests: int = 40
    # --write-delay, in seconds: how long a client's frames may wait to
    # leave together in one send() (partysense/wire/fastwrite.py). 0: one turn.
    write_delay: float = 0.0


class Connected(Protocol):
    """What the registry needs of every open client: a WebSocket (LiveProtocol)
    or an SSE stream (partysense/web/sse.py). Both are counted in /metrics and
    closed at shutdown (tap.ClientsService)."""

    @property
    def dialect(self) -> str | None: ...
    @property
    def bytes_sent(self) -> int: ...
    def close_with(self, code: int, reason: str) -> None: ...
    def abort(self) -> None: ...


class ClientRegistry:
    """The open clients, per address, and what they share."""

    def __init__(self, clock: Any, limits: Limits | None = None,
                 counters: ClientCounters | None = None, trusted_proxies: int = 0) -> None:
        self.clock = clock
        # Only the last N addresses of X-Forwarded-For were added by our proxies.
        self.trusted_proxies = trusted_proxies
        self.limits = limits or Limits()
        # --allowed-origins, matched one way for WebSockets and SSE (wire/origins.py).
        self.origins = AllowedOrigins(self.limits.allowed_origins)
        self.counters = counters if counters is not None else ClientCounters()
        self.writer = TurnWriter(clock, delay=self.limits.write_delay)
        # What clients did wrong, logged per address at a bounded rate.
        self.quiet = Quiet(CLIENTS_LOG, clock)
        self.access_log = AccessLog(clock)
        self.clients: set[Connected] = set()
        self.per_address: dict[str, int] = {}

    def admission(self, address: str) -> ClientError | None:
        """Why a new client from ``address`` may not stay, or None if it may."""
        limits = self.limits
        if len(self.clients) >= limits.max_clients:
            return ClientError("server_full", errors.TRY_AGAIN_LATER,
                               f"server full ({limits.max_clients} clients); retry later")
        if self.per_address.get(network_of(address), 0) >= limits.max_connections_per_ip:
            return ClientError(
                "too_many_connections", errors.TRY_AGAIN_LATER,
                f"more than {limits.max_connections_per_ip} connections from your address")
        return None

    def connected_from(self, address: str) -> int:
        """Clients (WebSockets and SSE streams) open from ``address`` (its /64 for IPv6)."""
        return self.per_address.get(network_of(address), 0)

    def enter(self, client: Connected, address: str) -> None:
        """``client`` is open: counted until :meth:`leave`."""
        address = network_of(address)
        self.per_address[address] = self.per_address.get(address, 0) + 1
        self.clients.add(client)

    def leave(self, client: Connected, address: str | None) -> None:
        """``client`` is gone (``address``: None if it was never counted)."""
        self.clients.discard(client)
        if address is not None:
            address = network_of(address)
            left = self.per_address.pop(address, 1) - 1
            if left:
                self.per_address[address] = left

    def clients_by_dialect(self) -> dict[str, int]:
        counts = {"seed": 0, "v2": 0, "sse": 0}
        for client in self.clients:
            dialect = client.dialect
            if dialect is not None:
                counts[dialect] = counts.get(dialect, 0) + 1
        return counts
