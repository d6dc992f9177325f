"""``/api/events/<id>/pulse``: an event's votes per minute over the last 30 minutes.

The live page draws it as a chart, then keeps it live from the changes it
receives. The answer says which changes it counts (``cursor``), so the page
adds exactly the ones after it.

Bounded like every question a stranger can ask: one query per event at a
time, its answer reused for ``ttl`` seconds by everyone (a party's phones
opening the page at once cost one query), at most ``MAX_RUNNING`` events
read at once (past it 503: the query connection also serves snapshots, and
a client walking through event ids must not queue in front of them), and
at most ``MAX_KEPT`` answers remembered. With tokens on, it needs a token
allowing the event, as a subscription does.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from partysense.changelog import PULSE_QUERY, Pulse, parse_pulse, pulse_params
from partysense.channels import MAX_EVENT_ID
from partysense.httpguard import token_refusal
from partysense.pgservice import NotConnected, Overloaded
from partysense.tokens import OPEN, Tokens

TTL = 5.0            # seconds an event's pulse is reused
MAX_RUNNING = 4      # events whose pulse is being read at once
MAX_KEPT = 10_000    # answers remembered


class Queries(Protocol):
    @property
    def connected(self) -> bool: ...

    def runQuery(self, query: Any, params: Any = None) -> Any: ...


class Busy(Exception):
    """Too many events' pulses are being read already."""


class PulseReads:
    """Per event: one query at a time, its answer reused for ``ttl`` seconds."""

    def __init__(self, queries: Queries, clock: IReactorTime, ttl: float = TTL) -> None:
        self._queries = queries
        self._clock = clock
        self.ttl = ttl
        self._kept: dict[int, tuple[Pulse, float]] = {}
        self._asking: dict[int, list[defer.Deferred[tuple[Pulse, float]]]] = {}
        self.queries = 0

    def pulse(self, event_id: int) -> defer.Deferred[tuple[Pulse, float]]:
        """The event's pulse, and the seconds since it was read."""
        kept = self._kept.get(event_id)
        now = self._clock.seconds()
        if kept is not None and now - kept[1] < self.ttl:
            return defer.succeed((kept[0], now - kept[1]))
        answer: defer.Deferred[tuple[Pulse, float]] = defer.Deferred()
        waiting = self._asking.get(event_id)
        if waiting is not None:
            waiting.append(answer)
            return answer
        if len(self._asking) >= MAX_RUNNING:
            return defer.fail(Busy())
        if not self._queries.connected:
            return defer.fail(NotConnected("the database is unreachable"))
        self._asking[event_id] = [answer]
        self.queries += 1
        self._queries.runQuery(PULSE_QUERY, pulse_params(event_id)).addBoth(
            self._answered, event_id)
        return answer

    def _answered(self, result: Any, event_id: int) -> None:
        waiting = self._asking.pop(event_id, [])
        if not isinstance(result, Failure):
            try:
                result = parse_pulse(result)
            except (IndexError, TypeError, ValueError):
                result = Failure()
        if isinstance(result, Failure):
            for answer in waiting:
                answer.errback(result)
            return
        if len(self._kept) >= MAX_KEPT:
            del self._kept[next(iter(self._kept))]  # the oldest
        self._kept.pop(event_id, None)
        self._kept[event_id] = (result, self._clock.seconds())
        for answer in waiting:
            answer.callback((result, 0.0))


def event_id_of(segment: bytes) -> int | None:
    """A path segment as an event id, or None."""
    if not segment.isdigit() or len(segment) > 19:
        return None
    value = int(segment)
    return value if 1 <= value <= MAX_EVENT_ID else None


class EventPulse(Resource):
    """``/api/events/<id>/pulse`` (a leaf: ``<id>`` was the last path segment
    taken, ``pulse`` is what is left)."""

    isLeaf = True
    _log = Logger()

    def __init__(self, reads: PulseReads, clock: IReactorTime, tokens: Tokens = OPEN) -> None:
        super().__init__()
        self._reads = reads
        self._clock = clock
        self._tokens = tokens

    def render_GET(self, request: Request) -> Any:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(code: int, body: Any, retry_after: int | None = None) -> None:
            if gone:
                return
            request.setResponseCode(code)
            request.setHeader("content-type", "application/json")
            request.setHeader("cache-control", "no-store")
            if retry_after is not None:
                request.setHeader("retry-after", str(retry_after))
            request.write(json.dumps(body).encode("utf-8") + b"\n")
            request.finish()

        event_id = event_id_of(request.prepath[-1]) if request.prepath else None
        if event_id is None or request.postpath != [b"pulse"]:
            answer(404, {"error": "not_found", "message": "/api/events/<id>/pulse"})
            return NOT_DONE_YET
        refusal = token_refusal(self._tokens, request, self._clock.seconds(), event_id)
        if refusal is not None:
            answer(*refusal)
            return NOT_DONE_YET

        def found(result: tuple[Pulse, float]) -> None:
            pulse, age = result
            body = {"event": event_id, "step": 60, **asdict(pulse)}
            body["now"] = round(pulse.now + age, 3)  # the database's clock, now
            body["fresh_in"] = round(max(0.0, self._reads.ttl - age), 3)
            answer(200, body)

        def failed(failure: Failure) -> None:
            if failure.check(Busy, Overloaded):
                answer(503, {"error": "unavailable", "message": "busy; retry soon"}, 5)
                return
            if not failure.check(NotConnected):
                self._log.failure("Reading an event's pulse failed", failure)
            answer(503, {"error": "unavailable", "message": "the database is unreachable"}, 5)

        self._reads.pulse(event_id).addCallbacks(found, failed)
        return NOT_DONE_YET
