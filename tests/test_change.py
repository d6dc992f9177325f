"""A notification parsed once into a Change; frames built from it (partysense/core/change.py)."""

from __future__ import annotations

import json
from typing import Any

import psycopg2
import pytest
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from partysense.core.change import BadChange, Change, parse_change
from partysense.core.hub import Delivery
from partysense.core.signature import payload_of
from partysense.dialects.seed import seed_frame
from partysense.dialects.v2frames import change_frame
from tests.support import Party
from tests.test_metrics import scrape, value

# Recorded from PostgreSQL 15's json_build_object (partysense_payload's shape): its spacing,
# its escapes, an emoji in UTF-8, a null name, a vote id past 2^32.
RECORDED = (
    '{"eid" : 3, "event" : "Friday \\"Fever\\" \U0001f389", '
    '"track" : "Tab\\tand\\nnewline \\\\ back", "artist" : null, "tid" : 12, "up" : false, '
    '"op" : "update", "vote" : 4200000000, "prev" : true, "seq" : 9007, '
    '"truncated" : false, "ts" : 1795989600.125}'
)


def unframed(frame: bytes) -> bytes:
    """The payload of one unmasked server text frame."""
    assert frame[0] == 0x81
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    return frame[start:]


@pytest.mark.logic
def test_a_recorded_payload_parses_into_every_field() -> None:
    change = parse_change(RECORDED)
    assert change == Change(
        event_id=3, seq=9007, committed_at=1795989600.125, op="update", vote_id=4200000000,
        track_id=12, up=False, prev=True, event_title='Friday "Fever" \U0001f389',
        track_name="Tab\tand\nnewline \\ back", artist=None, truncated=False,
        payload=RECORDED.encode("utf-8"))


@pytest.mark.logic
def test_the_seed_frame_is_the_database_bytes_and_built_once() -> None:
    delivery = Delivery("event_3", parse_change(RECORDED))
    frame = delivery.frame("seed", seed_frame)
    assert unframed(frame) == RECORDED.encode("utf-8")
    assert delivery.frame("seed", seed_frame) is frame  # every subscriber gets the same bytes


@pytest.mark.logic
@pytest.mark.parametrize(("channel", "sub"), [("event_3", 3), ("firehose", "ALL")])
def test_the_v2_frame_is_encoded_from_the_fields(channel: str, sub: Any) -> None:
    change = parse_change(RECORDED)
    message = json.loads(unframed(change_frame(channel, change)))
    assert message == {"type": "change", "sub": sub, **json.loads(RECORDED)}
    assert list(message)[:3] == ["type", "sub", "eid"]


@pytest.mark.logic
def test_an_old_trigger_without_ts_has_no_commit_time() -> None:
    old = RECORDED.replace(', "ts" : 1795989600.125', "")
    assert parse_change(old).committed_at is None


def _with(**changes: Any) -> str:
    body = json.loads(RECORDED)
    body.update(changes)
    return json.dumps(body)


@pytest.mark.logic
@pytest.mark.parametrize(("payload", "why"), [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ("[" * 5000 + "]" * 5000, "not JSON"),
    (RECORDED.replace('"seq" : 9007, ', ""), "missing seq"),
    (_with(type="snapshot"), "unexpected type"),  # would override a v2 frame's "type"
    (RECORDED[:-1] + ', "op" : "insert"}', "twice"),
    (_with(eid="3"), '"eid" is str'),
    (_with(vote=True), '"vote" is bool'),
    (_with(up=1), '"up" is int'),
    (_with(seq=0), '"seq" out of range'),
    (_with(seq=2**63), '"seq" out of range'),
    (_with(op="drop"), '"op" is not'),
    (_with(track="\ud800"), "lone surrogate"),
])
def test_anything_but_one_of_our_changes_is_refused(payload: str, why: str) -> None:
    with pytest.raises(BadChange, match=why):
        parse_change(payload)


@pytest.mark.daemon
def test_a_payload_that_is_not_a_change_is_counted_and_never_sent(
        daemon: Daemon, party: Party) -> None:
    event_id, other = party.event(), party.event()
    track_id = party.track()
    with connect(daemon.ws_url, open_timeout=10) as client:
        client.send(json.dumps({"event": event_id}))
        wait_for(lambda: daemon.health()[1]["channels"] == [f"event_{event_id}"], 10,
                 "the subscription")
        raw = psycopg2.connect(party.dsn)
        raw.autocommit = True
        with raw.cursor() as cursor:
            cursor.execute("LISTEN {}".format(f"event_{event_id}"))  # noqa: S608 (an int)
            for payload in ("not a vote", _with(eid=other, seq=2**40), _with(type="x")):
                cursor.execute("SELECT pg_notify(%s, %s)", (f"event_{event_id}", payload))
        party.vote(event_id, track_id)
        received = client.recv(timeout=10)
        # What the database sent for the real vote, byte for byte.
        wait_for(lambda: raw.poll() or len(raw.notifies) >= 4, 10, "the raw notifications")
        assert received == payload_of(raw.notifies[3].payload)
        assert json.loads(received)["eid"] == event_id
        raw.close()
    wait_for(lambda: value(scrape(daemon), "partysense_bad_notifications_total") == 3, 10,
             "the three bad notifications to be counted")
    # Logged, at a bounded rate: one line per channel per 10 s.
    assert daemon.log().count("is not a vote change") == 1
