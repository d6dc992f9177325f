"""Snapshots, replays and the log's end asked for at the same moment share one query.

When a venue's Wi-Fi comes back, every phone of the party subscribes again
within a second: one snapshot transaction each would be O(clients) queries.
Here, per event, one query runs at a time; everyone who asks while it runs
waits for the next one, which then serves them all. So a storm costs about
two queries per event, not one per client.

Why not hand a late asker the result of the query already running: its
snapshot may have been taken before the asker's subscription reached the hub,
and the changes committed in between would reach neither. A query that
starts after every one of its askers has subscribed is exact for all of them
(docs/exactness.md).

An event's tallies are also reused for ``reuse`` seconds (1 s): a GROUP BY
over a big event's votes is the one expensive question a client can ask, and
a client looping on it must not make everybody else's snapshots wait. A
reused snapshot comes with the changes committed since its cursor, read from
the log (a cheap range scan, itself shared): tallies as of the cursor plus
those changes are exactly what a fresh snapshot would say, and the
subscription sends them before going live.

What was read is kept as "the event as of seq N" (the tallies, and the
changes up to the log's newest seq N when they were read). While the listener
has read nothing past N, and listens on the event from before N, an asker
needs no query at all: every change after N is yet to be handed on, so it
reaches the asker's subscription (registered before it asks) live. During a
storm the queries are then a few per event and per vote, not per client. Such
a read is used past its second too, while it has few changes after its
tallies: an event nobody votes on costs one snapshot, not one a second.

Following the listener (``follow``), a kept read stays exact past that:
every change of its event that the listener hands on is added to it, so
while its channel stays LISTENed (the hub lets it linger after its last
subscriber: partysense/core/hub.py) it answers with no query however busy the
log, up to ``FEW_CHANGES`` changes after its tallies. A client reconnecting
in a loop, or cycling through events, then costs no snapshot each (issue 15).

The log's end (a seed subscription's floor, partysense/dialects/seed.py) is shared
too: a read that started at most 50 ms before an asker asked serves it
(partysense/reads/floors.py says why that is exact enough).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from partysense.core.change import Change
from partysense.core.channels import channel_event, channel_for
from partysense.core.interfaces import ChangeSource, Queries
from partysense.core.singleflight import SingleFlight
from partysense.db.changelog import (
    LOG_END_QUERY,
    TALLY_QUERY,
    Replay,
    Snapshot,
    replay_since,
    take_snapshot,
)
from partysense.reads import floors

REUSE = 1.0  # seconds an event's snapshot is reused (with the changes since)
# Past REUSE, a kept read that still holds is used as long as it has no more
# changes than this to send after its tallies.
FEW_CHANGES = 100
MAX_KEPT = 10_000  # snapshots kept at once


@dataclass
class Kept:
    """An event as of ``newest``: its tallies at ``snapshot.cursor`` and its
    changes after that cursor up to ``newest``."""

    snapshot: Snapshot
    at: float  # when the tallies were read
    changes: list[Change] = field(default_factory=list)
    newest: int = 0
    listener_seq: int = 0  # the listener's last_seq then
    # Followed from this seq on: every change of the event handed on since is
    # in ``changes`` (None: not followed).
    followed_from: int | None = None


class SharedReads:
    """Snapshots and replays of the change log, shared by concurrent askers.

    ``listener``: what tells whether a kept read still holds (None: never;
    every asker of a kept event then costs a shared replay).
    """

    def __init__(self, queries: Queries, clock: IReactorTime, reuse: float = REUSE,
                 listener: ChangeSource | None = None, floor_age: float = floors.AGE,
                 follow: bool = False, tally_query: str = TALLY_QUERY) -> None:
        self._queries = queries
        self._tally_query = tally_query  # WAL_TALLY_QUERY in WAL mode
        self._clock = clock
        self._reuse = reuse
        self._listener = listener
        self._follow = follow and listener is not None
        if listener is not None and self._follow:
            listener.observe(self._observe)
        self._kept: dict[int, Kept] = {}
        # Bumped when the log starts over: a read that began before is not kept.
        self._generation = 0
        # Per key, one query at a time; askers during it share the next
        # (never the running one: the module's docstring says why).
        self._snapshots: SingleFlight[int | None, tuple[Snapshot, list[Change]]] = \
            SingleFlight(clock, join_running=False)
        self._replays: SingleFlight[tuple[int | None, int], Replay] = \
            SingleFlight(clock, join_running=False)
        self._ends = floors.RecentLogEnd(self._log_end, clock, floor_age)
        self.queries = 0   # queries run so far (for tests and the bench)
        self.from_memory = 0  # answers that needed none

    def snapshot(self, event_id: int | None) -> defer.Deferred[tuple[Snapshot, list[Change]]]:
        """The event's tallies and their cursor (the firehose: the cursor only),
        with the changes since that cursor to send after them."""
        kept = self._fresh(event_id)
        if kept is not None and not self._holds(event_id, kept):
            return self.replay(event_id, kept.snapshot.cursor).addCallback(
                self._replayed, event_id, kept)
        return self._snapshots.ask(event_id, lambda: self._snapshot(event_id))

    def replay(self, event_id: int | None, since: int) -> defer.Deferred[Replay]:
        """The changes after ``since``, or a fresh snapshot when the log cannot tell.

        Shared by those who resume from the same cursor: after a restart, the
        phones that were up to date all resume from the same one.
        """
        return self._replays.ask((event_id, since), lambda: self._replay(event_id, since))

    def log_end(self) -> defer.Deferred[int]:
        """The newest seq committed, read by a query that started at most
        ``floor_age`` before this call: a seed client's floor (partysense/reads/floors.py)."""
        return self._ends.ask()

    def _fresh(self, event_id: int | None) -> Kept | None:
        kept = self._kept.get(event_id) if event_id is not None else None
        if kept is not None and self._clock.seconds() - kept.at < self._reuse:
            return kept
        return None

    def _still_good(self, event_id: int | None) -> Kept | None:
        """A kept read that answers an asker as it is: it holds, and it is
        young or has few changes to send after its tallies (an event nobody
        votes on keeps its read, however old)."""
        kept = self._kept.get(event_id) if event_id is not None else None
        if kept is None or not self._holds(event_id, kept):
            return None
        if self._clock.seconds() - kept.at < self._reuse or len(kept.changes) <= FEW_CHANGES:
            return kept
        return None

    def _holds(self, event_id: int | None, kept: Kept) -> bool:
        """Nothing of the event after ``kept.newest`` has been handed on yet,
        or all of it was followed into ``kept``."""
        listener = self._listener
        if listener is None or (listener.last_seq or 0) < kept.listener_seq:
            return False
        channel = channel_for(event_id)
        if kept.followed_from is not None and listener.listening_from(channel,
                                                                      kept.followed_from):
            return True
        return listener.complete_after(channel, kept.newest)

    def _start_following(self, event_id: int, kept: Kept) -> None:
        """Follow ``kept`` from now if nothing after it has been handed on yet."""
        listener = self._listener
        kept.followed_from = None
        if self._follow and listener is not None and listener.complete_after(
                channel_for(event_id), kept.newest):
            kept.followed_from = kept.newest

    def _observe(self, channel: str, change: Change) -> None:
        """A change handed on by the listener: added to its event's followed read."""
        event_id = channel_event(channel)
        kept = self._kept.get(event_id) if event_id is not None else None
        if kept is None or kept.followed_from is None or change.seq <= kept.newest:
            return
        if len(kept.changes) >= FEW_CHANGES:
            kept.followed_from = None  # a busy event: its next asker reads afresh
            return
        kept.changes.append(change)
        kept.newest = change.seq

    def _log_end(self) -> defer.Deferred[Any]:
        self.queries += 1
        return self._queries.runQuery(LOG_END_QUERY).addCallback(lambda rows: int(rows[0][0]))

    def _snapshot(self, event_id: int | None) -> defer.Deferred[Any]:
        # Askers who waited for the previous batch may find its answer still holds.
        kept = self._still_good(event_id)
        if kept is not None:
            self.from_memory += 1
            return defer.succeed((kept.snapshot, list(kept.changes)))
        self.queries += 1
        return self._queries.runInteraction(take_snapshot, event_id,
                                            self._tally_query).addCallback(
            self._keep, event_id, self._generation)

    def start_over(self) -> None:
        """The log started over (ChangeSource.on_start_over): nothing kept holds."""
        self._kept.clear()
        self._generation += 1

    def _keep(self, snapshot: Snapshot, event_id: int | None,
              generation: int) -> tuple[Snapshot, list[Change]]:
        if event_id is not None and generation == self._generation:
            if len(self._kept) >= MAX_KEPT:
                del self._kept[next(iter(self._kept))]  # the oldest
            self._kept.pop(event_id, None)
            listener_seq = (self._listener.last_seq or 0) if self._listener is not None else 0
            kept = self._kept[event_id] = Kept(snapshot, self._clock.seconds(), [],
                                               snapshot.cursor, listener_seq)
            self._start_following(event_id, kept)
        return snapshot, []

    def _replay(self, event_id: int | None, since: int) -> defer.Deferred[Any]:
        kept = self._still_good(event_id)
        if kept is not None and kept.snapshot.cursor == since:
            self.from_memory += 1
            return defer.succeed(Replay(list(kept.changes), newest=kept.newest))
        self.queries += 1
        return self._queries.runInteraction(replay_since, event_id, since,
                                            self._tally_query)

    def _replayed(self, replay: Replay, event_id: int | None,
                  kept: Kept) -> tuple[Snapshot, list[Change]]:
        if replay.snapshot is not None:
            return replay.snapshot, []
        if replay.newest is not None and replay.newest > kept.newest \
                and self._kept.get(event_id) is kept:  # type: ignore[arg-type]
            # The kept tallies plus these are the event as of replay.newest.
            kept.changes, kept.newest = list(replay.changes), replay.newest
            if event_id is not None:
                self._start_following(event_id, kept)
        return kept.snapshot, replay.changes
