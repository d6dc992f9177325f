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

The log's end (a seed subscription's floor, partysense/seed.py) is shared
the same way: one query at a time, those who ask meanwhile share the next.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from partysense.change import Change
from partysense.changelog import Replay, Snapshot, log_end, replay_since, take_snapshot

REUSE = 1.0  # seconds an event's snapshot is reused (with the changes since)
MAX_KEPT = 10_000  # snapshots kept at once


class Queries(Protocol):
    def runInteraction(self, interaction: Callable[..., Any],
                       *args: Any) -> defer.Deferred[Any]: ...


class _Batches:
    """Per key, one query at a time; askers during it share the next."""

    def __init__(self, run: Callable[[Any, list[Any]], defer.Deferred[Any]],
                 answer: Callable[[Any, Any], Any]) -> None:
        self._run = run          # (key, the askers' arguments) -> the shared result
        self._answer = answer    # (shared result, one asker's argument) -> its answer
        self._running: set[Any] = set()
        self._waiting: dict[Any, list[tuple[Any, defer.Deferred[Any]]]] = {}
        self.queries = 0

    def ask(self, key: Any, argument: Any) -> defer.Deferred[Any]:
        answer: defer.Deferred[Any] = defer.Deferred()
        self._waiting.setdefault(key, []).append((argument, answer))
        if key not in self._running:
            self._start(key)
        return answer

    def _start(self, key: Any) -> None:
        askers = self._waiting.pop(key, [])
        if not askers:
            return
        self._running.add(key)
        self.queries += 1
        self._run(key, [argument for argument, _ in askers]).addBoth(
            self._answered, key, askers)

    def _answered(self, result: Any, key: Any,
                  askers: list[tuple[Any, defer.Deferred[Any]]]) -> None:
        self._running.discard(key)
        for argument, answer in askers:
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(self._answer(result, argument))
        self._start(key)  # those who asked meanwhile


class SharedReads:
    """Snapshots and replays of the change log, shared by concurrent askers."""

    def __init__(self, queries: Queries, clock: IReactorTime, reuse: float = REUSE) -> None:
        self._queries = queries
        self._clock = clock
        self._reuse = reuse
        self._kept: dict[int, tuple[Snapshot, float]] = {}
        self._snapshots = _Batches(self._snapshot, lambda snapshot, _: snapshot)
        self._replays = _Batches(self._replay, lambda replay, _: replay)
        self._ends = _Batches(lambda _key, _askers: self._queries.runInteraction(log_end),
                              lambda end, _: end)

    @property
    def queries(self) -> int:
        """Queries run so far (for tests and the bench)."""
        return self._snapshots.queries + self._replays.queries + self._ends.queries

    def snapshot(self, event_id: int | None) -> defer.Deferred[tuple[Snapshot, list[Change]]]:
        """The event's tallies and their cursor (the firehose: the cursor only),
        with the changes since that cursor to send after them."""
        kept = self._kept.get(event_id) if event_id is not None else None
        if kept is not None and self._clock.seconds() - kept[1] < self._reuse:
            snapshot = kept[0]
            return self.replay(event_id, snapshot.cursor).addCallback(
                lambda replay: (replay.snapshot, []) if replay.snapshot is not None
                else (snapshot, replay.changes))
        return self._snapshots.ask(event_id, None).addCallback(lambda snapshot: (snapshot, []))

    def replay(self, event_id: int | None, since: int) -> defer.Deferred[Replay]:
        """The changes after ``since``, or a fresh snapshot when the log cannot tell.

        Shared by those who resume from the same cursor: after a restart, the
        phones that were up to date all resume from the same one.
        """
        return self._replays.ask((event_id, since), None)

    def log_end(self) -> defer.Deferred[int]:
        """The newest seq committed, read by a query that starts after this call.

        A seed client's floor (partysense/seed.py): every change it can have
        received from another daemon before it asked is at or below it.
        """
        return self._ends.ask(None, None)

    def _snapshot(self, event_id: int | None, _: list[Any]) -> defer.Deferred[Any]:
        return self._queries.runInteraction(take_snapshot, event_id).addCallback(
            self._keep, event_id)

    def _keep(self, snapshot: Snapshot, event_id: int | None) -> Snapshot:
        if event_id is not None:
            if len(self._kept) >= MAX_KEPT:
                del self._kept[next(iter(self._kept))]  # the oldest
            self._kept.pop(event_id, None)
            self._kept[event_id] = (snapshot, self._clock.seconds())
        return snapshot

    def _replay(self, key: tuple[int | None, int], _: list[Any]) -> defer.Deferred[Any]:
        event_id, since = key
        return self._queries.runInteraction(replay_since, event_id, since)
