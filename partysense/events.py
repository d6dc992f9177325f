"""Does an event exist? Asked of event_event, remembered for a while."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

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
        self._asking: dict[int, list[defer.Deferred[bool]]] = {}

    def exists(self, event_id: int) -> defer.Deferred[bool]:
        if self._known.get(event_id, -1.0) > self._clock.seconds():
            return defer.succeed(True)
        answer: defer.Deferred[bool] = defer.Deferred()
        waiting = self._asking.get(event_id)
        if waiting is not None:
            # After a restart a whole party subscribes at once: one question
            # for all of them, not thousands queued on the listener's one
            # connection (where they would starve its probe).
            waiting.append(answer)
            return answer
        self._asking[event_id] = [answer]
        self._run_query(EXISTS_QUERY, (event_id,)).addBoth(self._answered, event_id)
        return answer

    def _answered(self, result: Any, event_id: int) -> None:
        waiting = self._asking.pop(event_id, [])
        if isinstance(result, Failure):
            for answer in waiting:
                answer.errback(result)
            return
        found = bool(result[0][0])
        if found:
            self._known[event_id] = self._clock.seconds() + self._ttl
        for answer in waiting:
            answer.callback(found)
