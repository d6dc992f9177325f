"""Log lines anyone can cause come at a bounded rate (partysense/core/quietlog.py)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from partysense.core.quietlog import Quiet

pytestmark = pytest.mark.logic


def quiet_logger(clock: Clock) -> tuple[Quiet, list[str]]:
    lines: list[str] = []
    log = Logger(observer=lambda event: lines.append(formatEvent(event)))
    return Quiet(log, clock, interval=10.0), lines


def test_a_flood_is_one_line_per_interval_with_the_count_of_the_rest() -> None:
    clock = Clock()
    quiet, lines = quiet_logger(clock)
    for number in range(1000):
        quiet.warn("event_5", "Forged notification {number}", number=number)
    assert lines == ["Forged notification 0"]
    clock.advance(10.0)
    quiet.warn("event_5", "Forged notification {number}", number=1000)
    assert lines[1] == ("Forged notification 1000 "
                        "(999 more like it in the last 10 s not logged)")
    assert quiet.held_back == 999


def test_each_key_has_its_own_interval() -> None:
    clock = Clock()
    quiet, lines = quiet_logger(clock)
    quiet.warn("event_1", "on {channel}", channel="event_1")
    quiet.warn("event_2", "on {channel}", channel="event_2")
    quiet.warn("event_1", "on {channel}", channel="event_1")
    assert lines == ["on event_1", "on event_2"]


def test_the_keys_themselves_are_bounded() -> None:
    clock = Clock()
    quiet, lines = quiet_logger(clock)
    for number in range(25_000):
        quiet.warn(number, "key {number}", number=number)
    assert len(quiet._next) <= 10_000
