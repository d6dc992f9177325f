"""Presence: how many clients watch each event, across every daemon of the database.

Every ``--presence-interval`` seconds (5) each daemon makes ONE call on its
query connection, whatever its number of clients::

    SELECT event, total FROM partysense_presence_report(daemon, events[], watchers[], lifetime)

which stores its own count per event (a row per daemon and event in
``partysense_presence``, sql/install.sql), removes its rows of events it no
longer has, removes other daemons' expired rows, and returns the total of each
of its events over every daemon whose report has not expired. A row lives
``LIFETIME`` intervals: a daemon killed without a goodbye drops out of the
count by itself, within that and one more interval.

A watcher is a client subscribed to one event: a seed WebSocket, a v2
subscription, an SSE stream (a v2 connection subscribed to two events watches
both). The firehose (``ALL``) watches no event and is not counted. Seed clients
are counted but told nothing (their dialect carries vote payloads only).

After each call, the subscribers of every event whose total changed get
``{"type": "presence", "event": N, "watchers": K}`` through the hub's fan-out
(``Hub.notify``, encoded once). A new subscriber is told at once
(:meth:`PresenceService.current`): the others' count from the last call plus
this daemon's count now; its event is announced again after the next call, so
that estimate is corrected within an interval.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from partysense.core.channels import FIREHOSE, channel_event, event_channel
from partysense.core.errors import first_line
from partysense.core.notice import Notice

INTERVAL = 5.0        # seconds between a daemon's reports
LIFETIME = 3          # intervals a report counts for: two may be late before it drops out
GOODBYE_TIMEOUT = 2.0  # seconds the report of "none" may take at shutdown

# One statement per interval, the arrays bound as parameters (never built
# into the text): the daemon's id, its events, their counts, the lifetime.
REPORT_QUERY = ("SELECT event, total FROM partysense_presence_report("
                "%s::uuid, %s::bigint[], %s::integer[], %s::double precision)")


class Queries(Protocol):
    @property
    def connected(self) -> bool: ...
    def runQuery(self, query: Any, params: Any = None) -> defer.Deferred[list[tuple]]: ...


class Subscribers(Protocol):
    """What presence needs of the hub (partysense/core/hub.py)."""

    def subscriber_counts(self) -> dict[str, int]: ...
    def subscriber_count(self, channel: str) -> int: ...
    def notify(self, channel: str, notice: Notice) -> int: ...


def event_counts(channel_counts: dict[str, int]) -> dict[int, int]:
    """Event id to its watchers on this daemon; the firehose counts for none."""
    counts = {}
    for channel, count in channel_counts.items():
        if channel == FIREHOSE or count <= 0:
            continue
        try:
            event_id = channel_event(channel)
        except ValueError:
            continue
        if event_id is not None:
            counts[event_id] = count
    return counts


class PresenceService(Service):
    """Reports this daemon's watchers per event and announces the totals."""

    log = Logger()

    def __init__(self, queries: Queries, hub: Subscribers, clock: IReactorTime,
                 interval: float = INTERVAL, daemon: uuid.UUID | None = None) -> None:
        self._queries = queries
        self._hub = hub
        self._clock = clock
        self.interval = interval
        self.daemon = daemon or uuid.uuid4()
        self._loop = LoopingCall(self.report)
        self._loop.clock = clock
        self._running = False
        self._reported: dict[int, int] = {}  # this daemon's counts in the last answered call
        self._totals: dict[int, int] = {}    # the totals that call returned
        self._told: set[int] = set()         # events whose new subscribers got an estimate
        self._failing = False
        self.statements = 0                  # calls made (for /metrics, and the tests)
        self.failures = 0
        self.notices_sent = 0

    # -- the service ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # Not now: the query connection is not up yet.
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if not self._reported or not self._queries.connected:
            return None
        # A clean stop takes this daemon's watchers out of the count at once,
        # not a lifetime later (they reconnect elsewhere and count there).
        goodbye = self._queries.runQuery(REPORT_QUERY, (str(self.daemon), [], [], 0.0))
        goodbye.addTimeout(GOODBYE_TIMEOUT, self._clock)
        return goodbye.addErrback(lambda _: None)

    # -- one interval -------------------------------------------------------------

    def report(self) -> defer.Deferred[None] | None:
        """One call: this daemon's counts in, the totals out, the changed ones announced."""
        if self._running:  # never two at once (the loop also waits for our Deferred)
            return None
        if not self._queries.connected:
            return None
        local = event_counts(self._hub.subscriber_counts())
        told, self._told = self._told, set()
        events = sorted(local)
        params = (str(self.daemon), events, [local[e] for e in events],
                  self.interval * LIFETIME)
        self._running = True
        self.statements += 1
        # maybeDeferred: a synchronous raise would stop the loop for good.
        d = defer.maybeDeferred(self._queries.runQuery, REPORT_QUERY, params)
        d.addCallback(self._answered, local, told)
        d.addErrback(self._failed, told)
        return d.addBoth(self._done)

    def _done(self, _: Any) -> None:
        self._running = False

    def _answered(self, rows: list[tuple], local: dict[int, int], told: set[int]) -> None:
        if self._failing:
            self._failing = False
            self.log.info("Presence reports work again.")
        totals = {int(event): int(total) for event, total in rows if event in local}
        for event_id, count in local.items():
            totals.setdefault(event_id, count)  # always returned; never less than our own
        previous = self._totals
        self._reported, self._totals = local, totals
        for event_id, total in totals.items():
            if previous.get(event_id) != total or event_id in told:
                self.notices_sent += self._hub.notify(event_channel(event_id),
                                                      Notice(event_id, total))

    def _failed(self, failure: Any, told: set[int]) -> None:
        self.failures += 1
        self._told |= told  # their estimate is still to be corrected
        if not self._failing:  # once per outage, not once per interval
            self._failing = True
            self.log.warn("Presence report failed (counts are not updated until it works; "
                          "is sql/install.sql installed and EXECUTE on "
                          "partysense_presence_report granted?): {why}",
                          why=first_line(failure.value))

    # -- a new subscriber -----------------------------------------------------------

    def current(self, event_id: int) -> Notice:
        """The count to tell a new subscriber of ``event_id`` (already counted by
        the hub): the other daemons' from the last call, plus ours now. The
        event is announced after the next call, which corrects it if need be."""
        ours = self._hub.subscriber_count(event_channel(event_id))
        others = self._totals.get(event_id, 0) - self._reported.get(event_id, 0)
        self._told.add(event_id)
        return Notice(event_id, max(0, others) + ours)
