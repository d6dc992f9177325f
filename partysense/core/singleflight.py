"""One query in flight per key, shared by everyone who asks, its answer kept a while.

Several readers ask the database the same question at the same moment: a
party's phones opening the page at once, a storm of reconnections after the
venue's Wi-Fi comes back. Each would be one query; here, per key, one call
runs at a time and its answer goes to every asker it serves. What serves an
asker is stated, not implied, by three rules (each reader picks its own):

- ``keep``: an answer serves later askers for ``keep`` seconds after it
  arrived (``/api/events``, the pulse: "read at most every 5 s");
- ``started_within``: a call serves an asker only if it started at most
  ``started_within`` seconds before the asker asked, whether it is still
  running or already answered (the log's end: partysense/reads/floors.py);
- ``join_running``: whether an asker may join a call already running. If not
  (or it started too long ago), the asker waits for the next call, which
  starts when the running one ends and serves everyone who waited meanwhile
  (a snapshot must start after its asker subscribed: partysense/reads/sharedreads.py).

A failure fails every asker of the call together and is not kept: the next
asker starts a new call. An asker that cancels its Deferred leaves alone:
the call runs on for the others (and its answer is kept as usual).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Run = Callable[[], "defer.Deferred[Any]"]


@dataclass
class Answer(Generic[V]):
    """A kept answer: its value, when its call started and when it answered."""

    value: V
    started: float
    answered: float


@dataclass
class _Flight:
    """A call running for a key, its askers, and those waiting for the next call."""

    started: float
    askers: list[defer.Deferred[Any]] = field(default_factory=list)
    next_askers: list[defer.Deferred[Any]] = field(default_factory=list)
    next_run: Run | None = None


class SingleFlight(Generic[K, V]):
    """Per key, one call at a time, shared by its askers (see the module's rules)."""

    def __init__(self, clock: IReactorTime, keep: float = 0.0,
                 started_within: float | None = None, join_running: bool = True,
                 max_kept: int | None = None) -> None:
        self._clock = clock
        self._keep = keep
        self._started_within = started_within
        self._join_running = join_running
        self._max_kept = max_kept
        self._kept: dict[K, Answer[V]] = {}
        self._flights: dict[K, _Flight] = {}
        self.calls = 0  # calls started so far (for tests and the bench)

    def ask(self, key: K, run: Run) -> defer.Deferred[V]:
        """The answer for ``key``: kept, from the running call, or from a call of
        ``run`` (started now, or when the running call ends)."""
        kept = self.kept(key)
        if kept is not None:
            return defer.succeed(kept.value)
        answer: defer.Deferred[V] = defer.Deferred(lambda d: self._leave(key, d))
        flight = self._flights.get(key)
        if flight is None:
            self._start(key, run, [answer])
        else:
            self._queue(flight, [answer], run)
        return answer

    def kept(self, key: K) -> Answer[V] | None:
        """The kept answer for ``key`` if it still serves an asker asking now."""
        answer = self._kept.get(key)
        if answer is None:
            return None
        now = self._clock.seconds()
        if self._started_within is not None and now - answer.started <= self._started_within:
            return answer
        if now - answer.answered < self._keep:
            return answer
        return None

    def joinable(self, key: K) -> bool:
        """Whether an asker asking now would join a running call for ``key``."""
        flight = self._flights.get(key)
        return flight is not None and self._may_join(flight)

    @property
    def running(self) -> int:
        """How many keys have a call running."""
        return len(self._flights)

    def _may_join(self, flight: _Flight) -> bool:
        if not self._join_running:
            return False
        return (self._started_within is None
                or self._clock.seconds() - flight.started <= self._started_within)

    def _queue(self, flight: _Flight, askers: list[defer.Deferred[Any]], run: Run) -> None:
        """Askers join the running call if they may, else wait for the next."""
        if self._may_join(flight):
            flight.askers.extend(askers)
            return
        flight.next_askers.extend(askers)
        if flight.next_run is None:
            flight.next_run = run

    def _leave(self, key: K, answer: defer.Deferred[Any]) -> None:
        """A cancelled asker goes alone: the call runs on for the others
        (Deferred.cancel then fails ``answer`` with CancelledError)."""
        flight = self._flights.get(key)
        for askers in (flight.askers, flight.next_askers) if flight is not None else ():
            if answer in askers:
                askers.remove(answer)

    def _start(self, key: K, run: Run, askers: list[defer.Deferred[Any]]) -> None:
        # The askers are in place first: ``run`` may answer at once.
        flight = self._flights[key] = _Flight(self._clock.seconds(), list(askers))
        self.calls += 1
        try:
            call = run()
        except Exception:
            call = defer.fail(Failure())
        call.addBoth(self._answered, key, flight)

    def _answered(self, result: Any, key: K, flight: _Flight) -> None:
        del self._flights[key]
        if not isinstance(result, Failure):
            self._keep_answer(key, Answer(result, flight.started, self._clock.seconds()))
        for answer in flight.askers:
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)
        if flight.next_askers and flight.next_run is not None:
            # Those who could not join this call share the next one (or the
            # one an asker called back just now started).
            following = self._flights.get(key)
            if following is None:
                self._start(key, flight.next_run, flight.next_askers)
            else:
                self._queue(following, flight.next_askers, flight.next_run)

    def _keep_answer(self, key: K, answer: Answer[V]) -> None:
        if not self._keep and self._started_within is None:
            return  # nothing is kept: every asker needs a call
        self._kept.pop(key, None)
        if self._max_kept is not None and len(self._kept) >= self._max_kept:
            del self._kept[next(iter(self._kept))]  # the oldest
        self._kept[key] = answer
