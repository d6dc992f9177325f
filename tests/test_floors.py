"""A seed floor comes from a read of the log's end started at most AGE before the request."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from partysense.reads.floors import RecentLogEnd

pytestmark = pytest.mark.logic


class Log:
    """The log's end, read by queries the test answers by hand."""

    def __init__(self) -> None:
        self.reads: list[defer.Deferred[int]] = []

    def read(self) -> defer.Deferred[int]:
        self.reads.append(defer.Deferred())
        return self.reads[-1]


def answers(deferreds: list[defer.Deferred[int]]) -> list[Any]:
    got: list[Any] = []
    for deferred in deferreds:
        deferred.addBoth(got.append)
    return got


def test_a_storm_of_requests_costs_one_read_per_age_not_one_per_request() -> None:
    clock, log = Clock(), Log()
    ends = RecentLogEnd(log.read, clock, age=0.05)
    first = [ends.ask() for _ in range(100)]   # all share the read they started
    clock.advance(0.01)
    log.reads[0].callback(7)
    clock.advance(0.01)
    second = [ends.ask() for _ in range(100)]  # its read started 20 ms ago: still good
    assert answers(first + second) == [7] * 200
    assert len(log.reads) == 1
    clock.advance(0.04)                        # 60 ms after that read started: too old
    third = ends.ask()
    assert len(log.reads) == 2
    log.reads[1].callback(9)
    assert answers([third]) == [9]


def test_a_read_that_started_too_long_before_the_request_never_serves_it() -> None:
    clock, log = Clock(), Log()
    ends = RecentLogEnd(log.read, clock, age=0.05)
    early = ends.ask()
    clock.advance(0.2)                         # a slow query, still running
    late = ends.ask()
    log.reads[0].callback(3)
    assert answers([early]) == [3]
    assert len(log.reads) == 2 and not late.called  # the late asker waits for a new read
    log.reads[1].callback(5)
    assert answers([late]) == [5]


def test_a_failed_read_fails_its_askers_and_is_not_remembered() -> None:
    clock, log = Clock(), Log()
    ends = RecentLogEnd(log.read, clock, age=0.05)
    asked = [ends.ask(), ends.ask()]
    log.reads[0].errback(RuntimeError("connection lost"))
    got = answers(asked)
    assert [type(failure.value) for failure in got] == [RuntimeError, RuntimeError]
    again = ends.ask()
    assert len(log.reads) == 2
    log.reads[1].callback(4)
    assert answers([again]) == [4]


def test_with_no_age_every_request_gets_a_read_that_started_after_it() -> None:
    clock, log = Clock(), Log()
    ends = RecentLogEnd(log.read, clock, age=0.0)
    first = ends.ask()
    clock.advance(0.001)
    second = ends.ask()
    log.reads[0].callback(1)
    assert answers([first]) == [1] and not second.called
    log.reads[1].callback(2)
    assert answers([second]) == [2]
