"""Does an event exist? Asked of event_event, remembered for a while."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

EXISTS_QUERY = "SELECT EXISTS (SELECT 1 FROM event_event WHERE id = %s)"

RunQuery = Callable[[Any, Any], defer.Deferred[list[tuple]]]


# Answers remembered at once; past it the oldest are forgotten (ids come
# from clients: the cache must not grow with every id anyone tries).
MAX_REMEMBERED = 100_000


class EventDirectory:
    """Answers "does event N exist?", remembering a yes for ``ttl`` seconds and a
    no for ``unknown_ttl``.

    A no is remembered only briefly: an event created a moment ago must soon
    be joinable; but a client cycling through unknown ids must not cost a
    query each.
    """

    def __init__(self, run_query: RunQuery, clock: IReactorTime, ttl: float = 300.0,
                 unknown_ttl: float = 5.0) -> None:
        self._run_query = run_query
        self._clock = clock
        self._ttl = ttl
        self._unknown_ttl = unknown_ttl
        self._known: dict[int, tuple[bool, float]] = {}
        self.queries = 0
        self._asking: dict[int, list[defer.Deferred[bool]]] = {}

    def exists(self, event_id: int) -> defer.Deferred[bool]:
        found, until = self._known.get(event_id, (False, -1.0))
        if until > self._clock.seconds():
            return defer.succeed(found)
        answer: defer.Deferred[bool] = defer.Deferred()
        waiting = self._asking.get(event_id)
        if waiting is not None:
            # After a restart a whole party subscribes at once: one question
            # for all of them, not thousands queued on the listener's one
            # connection (where they would starve its probe).
            waiting.append(answer)
            return answer
        self._asking[event_id] = [answer]
        self.queries += 1
        self._run_query(EXISTS_QUERY, (event_id,)).addBoth(self._answered, event_id)
        return answer

    def _answered(self, result: Any, event_id: int) -> None:
        waiting = self._asking.pop(event_id, [])
        if isinstance(result, Failure):
            for answer in waiting:
                answer.errback(result)
            return
        found = bool(result[0][0])
        if len(self._known) >= MAX_REMEMBERED:
            del self._known[next(iter(self._known))]  # the oldest answer
        self._known[event_id] = (found, self._clock.seconds()
                                 + (self._ttl if found else self._unknown_ttl))
        for answer in waiting:
            answer.callback(found)
