"""What the daemon's layers need of the database side, declared once.

:class:`ChangeSource` is the seam between where changes come from and
everything that uses them: "committed changes in commit order, from a
cursor, then live". Today's one source is the LISTEN connection that reads
the change log (partysense/db/listener.py, ``ListenerService``); another (a
logical-decoding reader) plugs in by offering the same members, built by
``partysense.db.source.make_source``, without touching the hub, the dialects,
the reads or the web layer. What a source must guarantee is written in
docs/architecture.md ("The change source").

Declared here, in core, because the hub (core) names the source and must not
import db/. :class:`Queries` is the other connection (partysense/db/queries.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer

from partysense.core.change import Change

# Handed every change, with the channel it is for.
Observer = Callable[[str, Change], None]


class Link(Protocol):
    """A reconnecting link to the database, as /healthz, /metrics and /status see it."""

    @property
    def state(self) -> str:
        """"connecting", "connected", "disconnected" or "stopped"."""
    @property
    def reason(self) -> str:
        """Why not connected ("" when connected)."""
    @property
    def reconnects(self) -> int: ...

    @property
    def connected(self) -> bool: ...

    def whenConnected(self) -> defer.Deferred[None]:
        """Fires once connected (and ready)."""

    def whenAvailable(self) -> defer.Deferred[None]:
        """Fires once connected, at once or within what is left of the grace at
        start; fails with NotConnected past it."""


class Relay(Protocol):
    """The WAL mode's relay candidate (partysense/db/walrelay.py), as /healthz
    and /metrics see it."""

    state: str                   # connecting, relaying, standby, disconnected or stopped
    reason: str
    relayed: int                 # log rows this daemon's relay wrote
    takeovers: int               # times it took the slot
    slot_lag_bytes: int | None   # WAL the slot holds that no relay has logged yet
    slot_wal_status: str | None  # pg_replication_slots.wal_status (lost: invalidated)


class ChangeSource(Link, Protocol):
    """Committed changes in commit order (by ``seq``), from a cursor, then live.

    The hub tells it which channels (``event_<id>``, ``firehose``) have
    subscribers (``listen``/``unlisten``); it hands each change of those
    channels to every observer, in the order they were registered, exactly
    once per channel past the channel's floor (the log's end when it began
    following the channel). Reconnecting and catching up after an outage are
    its job: the layers above only see a gap-free sequence.
    """

    # The newest seq handed on (None before the first connection); it only
    # goes back when the database's log did (a restore).
    last_seq: int | None
    notifications: int      # changes handed on, per channel
    reads: int              # reads of the change log (catch-up; per ring without keys)

    @property
    def bad_notifications(self) -> int:
        """Announcements that are not one of our changes."""

    @property
    def signed(self) -> bool:
        """Changes are believed as they come, with no read of the log for each
        (False: the LISTEN source's doorbell mode, docs/security.md)."""
    relay: Relay | None     # the WAL mode's relay candidate (None: the listen mode)

    @property
    def channels(self) -> frozenset[str]:
        """The channels followed on the current connection."""

    def observe(self, observer: Observer) -> None:
        """Hand every change to ``observer`` too, after those registered before."""

    def before_batch(self, callback: Callable[[int], None]) -> None:
        """Call ``callback`` with the number of notifications of each batch of
        live changes, before any of them is handed on."""

    def after_batch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each batch of live changes has been handed on
        (what arrived together): the moment to send the frames they made."""

    def on_start_over(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the log no longer continues what was handed on
        (restored from a backup; in WAL mode, a slot made again): every tally
        read and every cursor from before is void (docs/exactness.md §4)."""

    def listen(self, channel: str) -> None:
        """Follow ``channel`` (now, or as soon as connected)."""

    def unlisten(self, channel: str) -> None:
        """Stop following ``channel``."""

    def whenListening(self, channel: str) -> defer.Deferred[None]:
        """Fires once ``channel`` is followed on the current connection: a
        snapshot taken after it misses nothing. Fails with NotConnected."""

    def complete_after(self, channel: str, seq: int) -> bool:
        """Every change on ``channel`` after ``seq`` is yet to be handed on."""

    def listening_from(self, channel: str, seq: int) -> bool:
        """``channel`` is followed, without a break, from at or before ``seq``:
        its every change after ``seq`` is (or will be) handed on."""


class Queries(Link, Protocol):
    """The connection for clients' questions (partysense/db/queries.py)."""

    def runQuery(self, query: Any, params: Any = None) -> defer.Deferred[list[tuple]]: ...

    def runInteraction(self, interaction: Callable[..., Any],
                       *args: Any) -> defer.Deferred[Any]: ...
