"""What a notification of sql/install.sql says, heard the way the daemon hears it:
LISTEN. Awkward and missing names arrive exact, oversized payloads are cut
short and the vote still commits, and the catch-up query rebuilds the live payload.

Every test LISTENs (the ``listen`` fixture, tests/conftest.py) with a plain
psycopg2 connection on a fresh database that has the stand-in schema and the
triggers, changes votes as Django does, and reads the notifications
PostgreSQL really sends. Which changes are notified, and in what order, is in
tests/test_sql_changes.py; the install itself in tests/test_sql_install.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from partysense.db.changelog import REPLAY_QUERY, replay_params
from tests.support import Party

pytestmark = pytest.mark.database

AWKWARD = [
    'Friday "Fever"',
    "back\\slash \\n not a newline",
    "line\nbreak",
    "tab\there",
    "emoji 🎉🪩 and ünïcödé",
    "<script>alert('x')</script>",
    "control \x01\x1f chars",
    "",
]



def test_awkward_names_arrive_exact(party: Party, listen: Any) -> None:
    heard = listen("firehose")
    for index, name in enumerate(AWKWARD):
        event_id = party.event(name[:70])
        track_id = party.track(name, f"{name} artist {index}")
        vote_id = party.vote(event_id, track_id, up=True)
        # strict JSON (json.loads rejects raw control characters), and exact text
        _, payload, raw = heard.next()
        assert payload == {
            "eid": event_id, "event": name[:70], "track": name,
            "artist": f"{name} artist {index}", "tid": track_id, "up": True,
            "op": "insert", "vote": vote_id, "prev": None, "seq": payload["seq"],
            "truncated": False, "ts": payload["ts"],
        }
        assert isinstance(payload["ts"], float)
        assert "\n" not in raw and "\t" not in raw


def test_null_track_name_stays_null(party: Party, listen: Any) -> None:
    heard = listen("firehose")
    event_id = party.event()
    track_id = party.track(None, "Nameless")
    party.vote(event_id, track_id)
    _, payload, _ = heard.next()
    assert payload["track"] is None
    assert (payload["artist"], payload["tid"], payload["eid"]) == ("Nameless", track_id, event_id)


def test_track_without_artist_row_keeps_the_payload(party: Party, listen: Any) -> None:
    """The real schema's music_view may give a NULL artist; the rest survives."""
    heard = listen("firehose")
    event_id = party.event()
    track_id = party.track("Lonely", "Gone")
    # The artist vanishes (the FK is deferred, so drop it for the test).
    party.query("ALTER TABLE music_track DROP CONSTRAINT music_track_artist_id_fkey")
    party.query("DELETE FROM music_artist WHERE name = 'Gone'")
    party.vote(event_id, track_id)
    _, payload, _ = heard.next()
    assert (payload["track"], payload["artist"], payload["tid"]) == ("Lonely", None, track_id)


def widen_names(party: Party) -> None:
    """Let the stand-in hold names longer than Django's limits (a schema may)."""
    party.query("DROP VIEW music_view")
    party.query("ALTER TABLE music_track ALTER COLUMN name TYPE text")
    party.query("ALTER TABLE music_artist ALTER COLUMN name TYPE text")
    party.query("ALTER TABLE event_event ALTER COLUMN title TYPE text")
    party.query("""CREATE VIEW music_view AS
        SELECT music_track.id, music_track.name, music_artist.name AS artist
        FROM music_track LEFT JOIN music_artist ON music_artist.id = music_track.artist_id""")


@pytest.mark.parametrize("filler", ["x", "🎉", "\x01"])
def test_oversized_payload_is_truncated_and_the_vote_commits(
        party: Party, listen: Any, filler: str) -> None:
    widen_names(party)
    heard = listen("firehose")
    event_id = party.event("T" + filler * 3000)
    track_id = party.track("N" + filler * 3000, "A" + filler * 3000)
    vote_id = party.vote(event_id, track_id, up=False)  # must not raise
    assert party.query("SELECT is_positive FROM event_vote WHERE id = %s", (vote_id,)) == [
        (False,)]
    live = []
    for op in ("insert", "update"):
        _, payload, raw = heard.next()
        assert payload["op"] == op and payload["vote"] == vote_id
        assert payload["truncated"] is True
        assert len(raw.encode("utf-8")) < 8000
        assert payload["event"] == ("T" + filler * 3000)[:300]
        assert payload["track"] == ("N" + filler * 3000)[:300]
        assert payload["artist"] == ("A" + filler * 3000)[:300]
        live.append(raw)
    # What the daemon reads back from the log is what was notified, shortened alike.
    replayed = [row[0] for row in party.query(REPLAY_QUERY, replay_params(0, [event_id], 10))]
    assert replayed == live


def test_payload_just_under_the_limit_is_not_truncated(party: Party, listen: Any) -> None:
    widen_names(party)
    heard = listen("firehose")
    event_id = party.event("e")
    track_id = party.track("t" * 7000, "a")
    party.vote(event_id, track_id)
    _, payload, raw = heard.next()
    assert payload["truncated"] is False and payload["track"] == "t" * 7000
    assert len(raw) < 7900
    # The one rule (partysense_notified_payload) reads it back whole, as notified.
    assert party.query(REPLAY_QUERY, replay_params(0, [event_id], 10)) == [(raw,)]



def test_catch_up_query_rebuilds_the_live_payload(party: Party, listen: Any) -> None:
    """What the listener replays after an outage is what it would have heard live."""
    heard = listen("firehose")
    event_id = party.event(AWKWARD[0])
    track_id = party.track(AWKWARD[4], AWKWARD[5])
    vote_id = party.vote(event_id, track_id, up=False)
    party.query("DELETE FROM event_vote WHERE id = %s", (vote_id,))
    live = [heard.next()[2] for _ in range(3)]
    replayed = [row[0] for row in party.query(REPLAY_QUERY, replay_params(0, None, 100))]
    assert replayed == live

