"""bench/notify_plumbing.py for a second, so that it cannot rot: both listeners
hear the notifications they are sent, and report a CPU figure for them."""

from __future__ import annotations

import pytest

from bench import notify_plumbing

pytestmark = pytest.mark.database


def test_both_listeners_hear_what_is_sent_and_say_what_it_cost(db_dsn: str) -> None:
    results = notify_plumbing.main(["--dsn", db_dsn, "--rate", "200", "--seconds", "1",
                                    "--rounds", "1"])
    assert results is not None
    for side in notify_plumbing.SIDES:
        [(micros, heard)] = results[side]
        assert heard >= 100, f"{side} heard {heard} of ~200 notifications in its second"
        assert micros > 0
