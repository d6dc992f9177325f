"""The change log against ways of changing votes other than a vote's own INSERT/UPDATE/DELETE.

The promise (docs/exactness.md): applying every change of the log to empty
tallies gives what ``GROUP BY`` says, whatever statement removed the votes.
"""

from __future__ import annotations

import pytest

from tests.support import Party, nonzero, tally

pytestmark = pytest.mark.database


def tallies_from_log(party: Party, event_id: int) -> dict[int, tuple[int, int]]:
    """What a client that applied every change of the event would hold."""
    counts: dict[int, list[int]] = {}
    for op, track_id, up, prev in party.query(
            "SELECT op, track_id, up, prev_up FROM partysense_change WHERE event_id = %s "
            "ORDER BY seq", (event_id,)):
        tally(counts, {"op": op, "tid": track_id, "up": up, "prev": prev})
    return nonzero(counts)


def test_truncate_is_logged_as_the_deletes_it_is(party: Party) -> None:
    event_id, other_event = party.event(), party.event()
    tracks = [party.track(f"T{i}") for i in range(2)]
    party.vote(event_id, tracks[0], up=True)
    party.vote(event_id, tracks[1], up=False)
    party.vote(other_event, tracks[0], up=False)
    assert tallies_from_log(party, event_id) == party.tallies(event_id) != {}
    party.query("TRUNCATE event_vote")
    assert party.tallies(event_id) == {}
    assert tallies_from_log(party, event_id) == {}
    assert tallies_from_log(party, other_event) == {}
    seqs = [row[0] for row in party.query("SELECT seq FROM partysense_change ORDER BY seq")]
    assert seqs == sorted(set(seqs))


def test_truncate_cascading_from_the_events_is_logged_too(party: Party) -> None:
    event_id, track_id = party.event(), party.track()
    party.vote(event_id, track_id, up=False)
    party.query("TRUNCATE event_event CASCADE")
    assert tallies_from_log(party, event_id) == {}
