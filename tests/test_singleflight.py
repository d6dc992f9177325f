"""One call in flight per key, shared by its askers, its answer kept a stated time."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from partysense.core.singleflight import SingleFlight

pytestmark = pytest.mark.logic


class Calls:
    """Calls the test answers by hand."""

    def __init__(self) -> None:
        self.started: list[defer.Deferred[Any]] = []

    def run(self) -> defer.Deferred[Any]:
        self.started.append(defer.Deferred())
        return self.started[-1]


def results(deferreds: list[defer.Deferred[Any]]) -> list[Any]:
    got: list[Any] = []
    for deferred in deferreds:
        deferred.addBoth(got.append)
    return got


def test_concurrent_askers_share_one_call_per_key() -> None:
    calls = Calls()
    flights: SingleFlight[str, int] = SingleFlight(Clock())
    asked = [flights.ask("a", calls.run) for _ in range(50)]
    other = flights.ask("b", calls.run)
    assert len(calls.started) == 2 and flights.running == 2
    calls.started[0].callback(7)
    calls.started[1].callback(8)
    assert results(asked + [other]) == [7] * 50 + [8]
    assert flights.calls == 2 and flights.running == 0


def test_an_answer_is_kept_for_the_stated_time_then_read_again() -> None:
    clock, calls = Clock(), Calls()
    flights: SingleFlight[str, int] = SingleFlight(clock, keep=5.0)
    first = flights.ask("a", calls.run)
    clock.advance(1.0)   # a slow call: kept from when it answered
    calls.started[0].callback(1)
    clock.advance(4.9)
    assert results([first, flights.ask("a", calls.run)]) == [1, 1]
    assert len(calls.started) == 1
    clock.advance(0.1)   # 5 s after the answer: read again
    again = flights.ask("a", calls.run)
    assert len(calls.started) == 2 and not again.called
    calls.started[1].callback(2)
    assert results([again]) == [2]


def test_without_keep_every_asker_after_an_answer_needs_a_call() -> None:
    calls = Calls()
    flights: SingleFlight[str, int] = SingleFlight(Clock())
    flights.ask("a", calls.run)
    calls.started[0].callback(1)
    flights.ask("a", calls.run)
    assert len(calls.started) == 2


def test_a_failure_fails_every_waiter_together_and_is_not_kept() -> None:
    calls = Calls()
    flights: SingleFlight[str, int] = SingleFlight(Clock(), keep=5.0)
    asked = [flights.ask("a", calls.run) for _ in range(3)]
    calls.started[0].errback(RuntimeError("connection lost"))
    assert [type(failure.value) for failure in results(asked)] == [RuntimeError] * 3
    again = flights.ask("a", calls.run)
    assert len(calls.started) == 2
    calls.started[1].callback(4)
    assert results([again]) == [4]


def test_a_call_that_raises_fails_its_askers() -> None:
    def broken() -> defer.Deferred[Any]:
        raise ValueError("no query")

    flights: SingleFlight[str, int] = SingleFlight(Clock())
    got = results([flights.ask("a", broken)])
    assert type(got[0].value) is ValueError and flights.running == 0


def test_a_cancelled_waiter_leaves_alone_and_the_call_serves_the_others() -> None:
    calls = Calls()
    flights: SingleFlight[str, int] = SingleFlight(Clock())
    leaving, staying = flights.ask("a", calls.run), flights.ask("a", calls.run)
    leaving.cancel()
    assert type(results([leaving])[0].value) is defer.CancelledError
    assert not calls.started[0].called  # the shared call was not cancelled
    calls.started[0].callback(3)
    assert results([staying]) == [3]


def test_askers_that_may_not_join_share_the_next_call_once_it_ends() -> None:
    calls = Calls()
    flights: SingleFlight[str, int] = SingleFlight(Clock(), join_running=False)
    first = flights.ask("a", calls.run)
    later = [flights.ask("a", calls.run) for _ in range(10)]
    assert len(calls.started) == 1 and not flights.joinable("a")
    calls.started[0].callback(1)
    assert results([first]) == [1] and len(calls.started) == 2
    calls.started[1].callback(2)
    assert results(later) == [2] * 10


def test_a_cancelled_asker_of_the_next_call_does_not_start_it_alone() -> None:
    calls = Calls()
    flights: SingleFlight[str, int] = SingleFlight(Clock(), join_running=False)
    flights.ask("a", calls.run)
    flights.ask("a", calls.run).cancel()
    calls.started[0].callback(1)
    assert len(calls.started) == 1


def test_started_within_serves_only_askers_a_call_started_shortly_before() -> None:
    clock, calls = Clock(), Calls()
    flights: SingleFlight[str, int] = SingleFlight(clock, started_within=0.05)
    early = flights.ask("a", calls.run)
    clock.advance(0.05)
    joined = flights.ask("a", calls.run)       # started 50 ms before: serves
    clock.advance(0.01)
    late = flights.ask("a", calls.run)         # 60 ms: waits for the next call
    calls.started[0].callback(1)
    assert results([early, joined]) == [1, 1] and not late.called
    assert len(calls.started) == 2
    clock.advance(0.04)
    calls.started[1].callback(2)
    assert results([late, flights.ask("a", calls.run)]) == [2, 2]  # its call started 40 ms ago
    clock.advance(0.02)
    flights.ask("a", calls.run)
    assert len(calls.started) == 3


def test_a_call_answering_at_once_serves_its_asker() -> None:
    flights: SingleFlight[str, int] = SingleFlight(Clock())
    assert results([flights.ask("a", lambda: defer.succeed(9))]) == [9]


def test_at_most_max_kept_answers_are_kept_the_oldest_leaving_first() -> None:
    flights: SingleFlight[int, int] = SingleFlight(Clock(), keep=5.0, max_kept=2)
    for key in (1, 2, 3):
        flights.ask(key, lambda key=key: defer.succeed(key))  # type: ignore[misc]
    assert flights.kept(1) is None
    assert [flights.kept(k).value for k in (2, 3)] == [2, 3]  # type: ignore[union-attr]
