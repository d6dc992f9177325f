"""``/api/events/<id>/pulse``: an event's votes per minute over the last 30 minutes.

The live page draws it as a chart, then keeps it live from the changes it
receives. The answer says which changes it counts (``cursor``), so the page
adds exactly the ones after it.

Bounded like every question a stranger can ask: an event that does not
exist is a 404 from the event directory (partysense/reads/events.py), with no
query; one query per event at a time, its answer reused for ``ttl`` seconds
by everyone (a party's phones opening the page at once cost one query); at
most ``MAX_RUNNING_PER_ADDRESS`` events read at once for one address (past
it 429: a client walking through event ids waits for itself, and a real
page's chart still answers) and ``MAX_RUNNING`` for all (past it 503: the
query connection also serves snapshots); at most ``MAX_KEPT`` answers
remembered. With tokens on, it needs a token allowing the event, as a
subscription does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from partysense.core.addresses import network_of
from partysense.core.channels import MAX_EVENT_ID
from partysense.core.interfaces import Queries
from partysense.core.quietlog import Quiet
from partysense.core.singleflight import SingleFlight
from partysense.db.changelog import PULSE_QUERY, Pulse, parse_pulse, pulse_params
from partysense.db.pgservice import NotConnected, Overloaded
from partysense.dialects.tokens import OPEN, Tokens
from partysense.web.httpguard import token_refusal
from partysense.web.jsonanswer import LaterAnswer
from partysense.web.sserequest import client_address

TTL = 5.0            # seconds an event's pulse is reused
MAX_RUNNING = 8      # events whose pulse is being read at once
MAX_RUNNING_PER_ADDRESS = 2  # of them asked for by one address
MAX_KEPT = 10_000    # answers remembered


# (address, event id) -> does the event exist (partysense/dialects/dialect.py, Shared.event_exists)
Exists = Callable[[str, int], defer.Deferred[bool]]


class Busy(Exception):
    """Too many events' pulses are being read already."""


class BusyHere(Busy):
    """Too many events' pulses are being read already for this address."""


class PulseReads:
    """Per event: one query at a time, its answer reused for ``ttl`` seconds
    (core/singleflight.py); a new read is admitted only within the limits."""

    def __init__(self, queries: Queries, clock: IReactorTime, ttl: float = TTL) -> None:
        self._queries = queries
        self._clock = clock
        self.ttl = ttl
        self._flights: SingleFlight[int, Pulse] = SingleFlight(clock, keep=ttl,
                                                               max_kept=MAX_KEPT)
        self._running_for: dict[str, int] = {}  # address -> its reads running

    @property
    def queries(self) -> int:
        return self._flights.calls

    def pulse(self, event_id: int, address: str = "?") -> defer.Deferred[tuple[Pulse, float]]:
        """The event's pulse, and the seconds since it was read; a new read
        counts against ``address``'s reads at once."""
        kept = self._flights.kept(event_id)
        if kept is not None:
            return defer.succeed((kept.value, self._clock.seconds() - kept.answered))
        if not self._flights.joinable(event_id):
            refusal = self._refusal(address)
            if refusal is not None:
                return defer.fail(refusal)
        return self._flights.ask(event_id, lambda: self._read(event_id, address)).addCallback(
            lambda pulse: (pulse, 0.0))

    def _refusal(self, address: str) -> Exception | None:
        """Why a new read may not start now, or None."""
        if self._running_for.get(address, 0) >= MAX_RUNNING_PER_ADDRESS:
            return BusyHere()
        if self._flights.running >= MAX_RUNNING:
            return Busy()
        if not self._queries.connected:
            return NotConnected("the database is unreachable")
        return None

    def _read(self, event_id: int, address: str) -> defer.Deferred[Pulse]:
        self._running_for[address] = self._running_for.get(address, 0) + 1
        reading: defer.Deferred[Any] = defer.maybeDeferred(
            self._queries.runQuery, PULSE_QUERY, pulse_params(event_id))
        return reading.addBoth(self._read_done, address).addCallback(parse_pulse)

    def _read_done(self, result: Any, address: str) -> Any:
        running = self._running_for.pop(address, 1) - 1
        if running:
            self._running_for[address] = running
        return result


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

    def __init__(self, reads: PulseReads, clock: IReactorTime, tokens: Tokens = OPEN,
                 exists: Exists | None = None, trusted_proxies: int = 0) -> None:
        super().__init__()
        self._reads = reads
        self._clock = clock
        self._tokens = tokens
        self._exists = exists
        self._trusted_proxies = trusted_proxies
        self._quiet = Quiet(self._log, clock)  # refusals: a line per address every 10 s

    def render_GET(self, request: Request) -> Any:
        answer = LaterAnswer(request)

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
            if failure.check(Unknown):
                answer(404, {"error": "unknown_event",
                             "message": f"event {event_id} does not exist"})
                return
            if failure.check(BusyHere):
                self._quiet.info(network_of(address), "Refused a pulse to {peer}: more than {most} "
                                 "read at once for one address", peer=address,
                                 most=MAX_RUNNING_PER_ADDRESS)
                answer(429, {"error": "too_many_requests",
                             "message": "your address's charts are being read; retry soon"}, 5)
                return
            if failure.check(Busy, Overloaded):
                answer(503, {"error": "unavailable", "message": "busy; retry soon"}, 5)
                return
            if not failure.check(NotConnected):
                self._log.failure("Reading an event's pulse failed", failure)
            answer(503, {"error": "unavailable", "message": "the database is unreachable"}, 5)

        address = client_address(request, self._trusted_proxies)
        self._read(event_id, address).addCallbacks(found, failed)
        return NOT_DONE_YET

    @defer.inlineCallbacks
    def _read(self, event_id: int, address: str) -> Any:
        if self._exists is not None and not (yield self._exists(address, event_id)):
            raise Unknown()
        return (yield self._reads.pulse(event_id, address))


class Unknown(Exception):
    """No such event."""
