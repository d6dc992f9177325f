"""Does an event exist? Asked of event_event, remembered for a while."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

EXISTS_QUERY = "SELECT EXISTS (SELECT 1 FROM event_event WHERE id = %s)"

RunQuery = Callable[[Any, Any], defer.Deferred[list[tuple]]]


class EventDirectory:
    """Answers "does event N exist?", caching the yes for ``ttl`` seconds.

    A no is never cached: an event created a second ago must be joinable.
    """

    def __init__(self, run_query: RunQuery, clock: IReactorTime, ttl: float = 300.0) -> None:
        self._run_query = run_query
        self._clock = clock
        self._ttl = ttl
        self._known: dict[int, float] = {}

    @defer.inlineCallbacks
    def exists(self, event_id: int) -> Any:
        now = self._clock.seconds()
        if self._known.get(event_id, -1.0) > now:
            return True
        rows = yield self._run_query(EXISTS_QUERY, (event_id,))
        found = bool(rows[0][0])
        if found:
            self._known[event_id] = now + self._ttl
        return found
