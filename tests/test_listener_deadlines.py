"""The listener's deadlines that fire late: one more I/O round before a drop.

On Twisted's ``Clock``; the connect deadline is in tests/test_listener_connecting.py.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer, task

from partysense.db.deadline import before_deadline


class _DroppableConnection:
    def __init__(self) -> None:
        self.dropped: list[str] = []

    def drop(self, why: str) -> None:
        self.dropped.append(why)


def fire_late(clock: task.Clock) -> None:
    """Run the due timer the way a reactor does: calls it schedules wait a round.

    (``Clock.advance`` would also run the ``callLater(0)`` the timer makes,
    which a real reactor only runs after its next I/O poll.)
    """
    (timer,) = clock.getDelayedCalls()
    clock.calls.remove(timer)
    timer.called = 1
    timer.func(*timer.args, **timer.kw)


@pytest.mark.logic
def test_a_deadline_waits_one_more_io_round_before_dropping() -> None:
    clock = task.Clock()
    connection = _DroppableConnection()
    answer: defer.Deferred[None] = defer.Deferred()
    before_deadline(clock, connection, answer, 4.0, "silent")
    clock.advance(3.9)
    fire_late(clock)  # the deadline's timer fires, late after a busy reactor...
    assert connection.dropped == []
    answer.callback(None)  # ...and the next I/O round reads the answer that waited
    clock.advance(0)
    assert connection.dropped == []
    assert clock.getDelayedCalls() == []


@pytest.mark.logic
def test_a_deadline_drops_a_connection_that_really_is_silent() -> None:
    clock = task.Clock()
    connection = _DroppableConnection()
    answer: defer.Deferred[None] = defer.Deferred()
    before_deadline(clock, connection, answer, 4.0, "silent")
    clock.advance(4.0)
    clock.advance(0)
    assert connection.dropped == ["silent"]
