"""Does an event exist? The ids of every event, kept in memory and refreshed.

Before, each id a client named cost a ``SELECT EXISTS`` (remembered 5 s):
a client reconnecting in a loop with ids that do not exist made thousands
of lookups a second. Now the daemon keeps the ids of the events that exist
(a sorted array: 8 bytes an event, so a million events are 8 MB) and an
unknown id is answered from it, with no query.

The ids are read in pages along the primary key. Every ``refresh_every``
seconds (and on a miss, at most once every ``miss_interval`` seconds for
the whole daemon) only the newest are read again: the ids from
``LOOKBACK`` below the newest known, since an id is handed out at INSERT but
seen only at COMMIT, so ids may appear a little out of order. Every
``reload_every`` seconds the whole table is read again, so deleted events
leave.

A miss is looked for again only if the id could be an event created since
the last read: within ``LOOKBACK`` below and ``NEW_SPAN`` above the newest
known (ids come from one sequence, a few a minute). It then waits for the
next read, at most ``miss_interval`` away, shared by every miss meanwhile:
a page opened the moment its event was created finds it. Any other id is
unknown at once, with no query (``424242``, or a million ids in a loop).

Why not core/singleflight.py, which the other shared reads use: what a read
leaves is the directory itself, not an answer to keep, and a miss's read is
spaced from the last read's *start* (timer reads included) by a delayed call
that stopping cancels, failing its waiters. Put through the helper, a timer
read would have to wait behind a miss's delay, or a miss join a read it did
not ask for: the rules above would change.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from partysense.core.interfaces import Queries
from partysense.db.pgservice import NotConnected

IDS_QUERY = "SELECT id FROM event_event WHERE id > %s ORDER BY id LIMIT %s"
PAGE = 50_000          # ids read by one query
LOOKBACK = 1_000       # ids below the newest known that each refresh reads again
REFRESH_EVERY = 5.0    # seconds between reads of the newest ids
RELOAD_EVERY = 600.0   # seconds between reads of every id
MISS_INTERVAL = 1.0    # a miss reads the newest ids at most this often
NEW_SPAN = 1_000       # ids above the newest known that may be events created since


class EventDirectory(Service):
    """Answers "does event N exist?" from the ids it keeps; a started service
    refreshes them on a timer."""

    _log = Logger()

    def __init__(self, queries: Queries, clock: IReactorTime,
                 refresh_every: float = REFRESH_EVERY, reload_every: float = RELOAD_EVERY,
                 miss_interval: float = MISS_INTERVAL) -> None:
        self._queries = queries
        self._clock = clock
        self._refresh_every = refresh_every
        self._reload_every = reload_every
        self._miss_interval = miss_interval
        self._ids = array("q")
        self._loaded_at: float | None = None   # when the last whole read started
        self._asked_at = -float("inf")         # when the last read started
        self._waiting: list[defer.Deferred[None]] | None = None  # while a read runs
        self._next: list[defer.Deferred[None]] = []  # misses waiting for the next read
        self._next_call: Any = None                  # when that read starts
        self._timer = LoopingCall(self._tick)
        self._timer.clock = clock
        self.queries = 0  # queries run so far (for tests)

    def startService(self) -> None:
        super().startService()
        self._timer.start(self._refresh_every, now=False)

    def stopService(self) -> Any:
        if self._timer.running:
            self._timer.stop()
        if self._next_call is not None and self._next_call.active():
            self._next_call.cancel()
        self._next_call = None
        waiting, self._next = self._next, []
        for done in waiting:  # no read will come for them
            done.errback(NotConnected("the daemon is stopping"))
        return super().stopService()

    def __len__(self) -> int:
        return len(self._ids)

    def exists(self, event_id: int, look_again: bool = True) -> defer.Deferred[bool]:
        """Whether the event exists. An id not kept is looked for again by the
        next read (at most ``miss_interval`` away) only if ``look_again`` and
        it could be a new event; else the answer is no, at once."""
        if self._has(event_id):
            return defer.succeed(True)
        if self._loaded_at is not None and not (look_again and self._could_be_new(event_id)):
            return defer.succeed(False)
        # The first ask waits for the first read (then, a failure is the caller's).
        done: defer.Deferred[None] = defer.Deferred()
        if self._waiting is not None:
            self._waiting.append(done)  # a read is running: its answer will do
        else:
            self._next.append(done)
            self._schedule_next()
        return done.addCallback(lambda _: self._has(event_id))

    def _could_be_new(self, event_id: int) -> bool:
        newest = self._ids[-1] if self._ids else 0
        return newest - LOOKBACK < event_id <= newest + NEW_SPAN

    def _schedule_next(self) -> None:
        """Start the read the misses wait for, once no read runs and the last
        started ``miss_interval`` ago."""
        if not self._next or self._waiting is not None or self._next_call is not None:
            return
        delay = self._asked_at + self._miss_interval - self._clock.seconds()
        if delay > 0:
            self._next_call = self._clock.callLater(delay, self._read_for_next)
        else:
            self._read_for_next()

    def _read_for_next(self) -> None:
        self._next_call = None
        waiting, self._next = self._next, []
        self._read(waiting)

    def _has(self, event_id: int) -> bool:
        at = bisect_left(self._ids, event_id)
        return at < len(self._ids) and self._ids[at] == event_id

    def _tick(self) -> None:
        if not self._queries.connected or self._waiting is not None:
            return
        done: defer.Deferred[None] = defer.Deferred()
        self._read([done])
        done.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        self._log.info("Reading the event ids failed (the next read is in {every:g} s): "
                       "{error}", every=self._refresh_every, error=failure.getErrorMessage())

    def _read(self, waiting: list[defer.Deferred[None]]) -> None:
        """Read the newest ids (or all of them, when due); ``waiting`` hear when
        it is done. One read at a time: callers check none runs."""
        self._waiting = waiting
        now = self._clock.seconds()
        self._asked_at = now
        whole = self._loaded_at is None or now - self._loaded_at >= self._reload_every
        self._read_ids(whole, now).addBoth(self._read_done)

    def _read_done(self, result: Any) -> None:
        waiting, self._waiting = self._waiting or [], None
        for done in waiting:
            if isinstance(result, Failure):
                done.errback(result)
            else:
                done.callback(None)
        self._schedule_next()  # misses that came while it ran

    @defer.inlineCallbacks
    def _read_ids(self, whole: bool, started: float) -> Any:
        after = 0 if whole or not self._ids else max(0, self._ids[-1] - LOOKBACK)
        fresh = array("q")
        last = after
        while True:
            self.queries += 1
            rows = yield self._queries.runQuery(IDS_QUERY, (last, PAGE))
            fresh.extend(row[0] for row in rows)
            if len(rows) < PAGE:
                break
            last = rows[-1][0]
        # What was read replaces everything kept above ``after`` (gone events go).
        kept = self._ids[:bisect_right(self._ids, after)] if not whole else array("q")
        kept.extend(fresh)
        self._ids = kept
        if whole:
            self._loaded_at = started

