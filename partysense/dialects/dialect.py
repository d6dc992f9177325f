"""What a dialect session may use, and what it must offer.

A session (partysense/dialects/seed.py, partysense/dialects/v2.py) speaks one dialect with one
client. It sees the client only through :class:`Client` (send a frame,
stream a replay, close a client that does not read) and the rest of the
daemon through :class:`Shared`, built once by the service assembly
(partysense/tap.py). The WebSocket protocol above never imports a dialect:
it is handed a table of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from partysense.adapters.autobahn_adapter import Frame
from partysense.core.budgets import Budgets, budgets_for
from partysense.core.hub import Hub
from partysense.core.interfaces import ChangeSource
from partysense.core.notice import Notice
from partysense.db.changelog import MAX_REPLAY
from partysense.dialects.tokens import OPEN, Tokens


class Client(Protocol):
    """What a session may do to its connection."""

    @property
    def peer(self) -> str | None: ...
    @property
    def address(self) -> str | None: ...
    @property
    def is_live(self) -> bool: ...
    @property
    def url_token(self) -> str | None: ...
    def send_frame(self, frame: Frame) -> None: ...
    def send_json(self, body: dict[str, Any]) -> None: ...
    def stream(self, frames: Iterable[Frame]) -> defer.Deferred[None]: ...
    def too_slow(self) -> None: ...
    def log_refused(self, kind: str, message: str) -> None: ...
    def close_with(self, code: int, reason: str) -> None: ...


class Session(Protocol):
    """One client's conversation in one dialect."""

    dialect: str

    @property
    def subscriptions(self) -> int: ...
    def received(self, text: str) -> Any: ...
    def close(self) -> None: ...


# Makes the session of a newly connected client.
MakeSession = Callable[[Client], Session]


class Reads(Protocol):
    """Snapshots and replays of the change log (partysense/reads/sharedreads.py)."""

    def snapshot(self, event_id: int | None) -> defer.Deferred[Any]:
        """(Snapshot, changes since its cursor)."""
    def replay(self, event_id: int | None, since: int) -> defer.Deferred[Any]: ...
    def log_end(self) -> defer.Deferred[int]: ...


class Events(Protocol):
    def exists(self, event_id: int, look_again: bool = True) -> defer.Deferred[bool]: ...


class Presence(Protocol):
    """How many watch an event (partysense/db/presence.py)."""

    def current(self, event_id: int) -> Notice: ...


@dataclass
class ClientCounters:
    """What clients did wrong, counted for /metrics (docs/operations.md)."""

    bad_inputs: dict[str, int] = field(default_factory=dict)
    slow_closed: int = 0
    closed_client_bytes: int = 0

    def bad_input(self, kind: str) -> None:
        self.bad_inputs[kind] = self.bad_inputs.get(kind, 0) + 1


@dataclass(frozen=True)
class Shared:
    """What every session of the daemon shares."""

    hub: Hub
    listener: ChangeSource
    reads: Reads
    events: Events
    counters: ClientCounters
    clock: IReactorTime
    max_subscriptions: int = 32
    tokens: Tokens = OPEN
    budgets: Budgets = field(default_factory=budgets_for)
    presence: Presence | None = None  # None: --presence-interval 0, nobody is told

    def event_exists(self, address: str, event_id: int) -> defer.Deferred[bool]:
        """Whether the event exists (no query: partysense/reads/events.py). An address's
        unknown ids make the directory look again only within its budget of misses."""
        misses, now = self.budgets.misses, self.clock.seconds()
        look_again = misses.level(address, now) >= 1

        def counted(found: bool) -> bool:
            if not found:
                misses.charge(address, now, 1)
            return found

        return self.events.exists(event_id, look_again).addCallback(counted)

    def replay_rows(self, since: int) -> int:
        """The most rows a replay after ``since`` can send (reserved from the budget)."""
        newest = self.listener.last_seq
        behind = MAX_REPLAY if newest is None else newest - since
        return max(1, min(MAX_REPLAY, behind))
