"""Hold until caught up, then pass what is past the cursor (partysense/dialects/catchup.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from partysense.core.hub import Delivery
from partysense.dialects.catchup import CatchUp, past

pytestmark = pytest.mark.logic


def change(seq: int) -> Any:
    """A change as the gate sees it: its seq."""
    return SimpleNamespace(seq=seq)


class Gate:
    def __init__(self, max_pending: int = 100) -> None:
        self.sent: list[str] = []
        self.overflows = 0
        self.catchup = CatchUp(self.sent.append, self.overflow, max_pending=max_pending)

    def overflow(self) -> None:
        self.overflows += 1

    def live(self, *seqs: int) -> None:
        for seq in seqs:
            self.catchup.deliver(Delivery("event_1", change(seq)), f"frame {seq}")


def test_changes_wait_until_caught_up_then_only_those_past_the_cursor_go_in_order() -> None:
    gate = Gate()
    gate.live(11, 12, 13)
    assert gate.sent == []
    gate.catchup.caught_up(12)  # the replay went as far as 12
    assert gate.sent == ["frame 13"]
    gate.live(13, 14, 12, 15)  # a duplicate and an old one are not sent again
    assert gate.sent == ["frame 13", "frame 14", "frame 15"]
    assert gate.catchup.cursor == 15


def test_too_many_waiting_is_an_overflow() -> None:
    gate = Gate(max_pending=2)
    gate.live(1, 2)
    assert gate.overflows == 0
    gate.live(3)
    assert gate.overflows == 1


def test_stopped_it_sends_nothing_more_not_even_what_waited() -> None:
    gate = Gate()
    gate.live(5, 6)
    gate.catchup.stop()
    gate.catchup.caught_up(4)
    gate.live(7)
    assert gate.sent == []


def test_past_keeps_the_replay_after_the_cursor_and_says_where_it_ends() -> None:
    assert past(10, []) == ([], 10)
    replayed, last = past(10, [change(9), change(10), change(11), change(14)])
    assert [c.seq for c in replayed] == [11, 14] and last == 14
