"""The daemon as its users run it: twistd, a real PostgreSQL, foreign WebSocket clients."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from tests.support import Party

pytestmark = pytest.mark.daemon


def subscribed(daemon: Daemon, request: object, channels: int = 1):
    """A seed client that has sent its request and is known to be subscribed."""
    client = connect(daemon.ws_url, open_timeout=10)
    client.send(json.dumps(request))
    wait_for(lambda: len(daemon.health()[1]["channels"]) >= channels, 10,
             "the subscription to reach the listener")
    return client


def test_seed_client_gets_event_and_firehose_votes(daemon: Daemon, party: Party) -> None:
    event_id = party.event("Friday")
    track_id = party.track("Song", "Band")
    with subscribed(daemon, {"event": event_id}) as one, \
            subscribed(daemon, {"event": "ALL"}, channels=2) as everything:
        vote_id = party.vote(event_id, track_id, up=False)
        first = json.loads(one.recv(timeout=10))
        second = json.loads(one.recv(timeout=10))
        assert (first["op"], first["up"], first["vote"]) == ("insert", True, vote_id)
        assert (second["op"], second["up"], second["prev"]) == ("update", False, True)
        assert {first["track"], first["artist"], first["tid"]} == {"Song", "Band", track_id}
        firehose = [json.loads(everything.recv(timeout=10)) for _ in range(2)]
        assert [m["seq"] for m in firehose] == [first["seq"], second["seq"]]
        assert firehose[0]["eid"] == event_id and firehose[0]["event"] == "Friday"


def test_string_event_id_and_moving_the_subscription(daemon: Daemon, party: Party) -> None:
    first_event, second_event = party.event("A"), party.event("B")
    track_id = party.track()
    with subscribed(daemon, {"event": str(first_event)}) as client:
        client.send(json.dumps({"event": second_event}))
        wait_for(lambda: daemon.health()[1]["channels"] == [f"event_{second_event}"], 10,
                 "the subscription to move")
        party.vote(first_event, track_id)
        party.vote(second_event, track_id)
        message = json.loads(client.recv(timeout=10))
        assert message["eid"] == second_event


@pytest.mark.parametrize(("frame", "code"), [
    ("not json", 1007),
    ('{"events": 1}', 1008),
    ('[1, 2]', 1008),
    ('{"event": -1}', 1008),
    ('{"event": 0}', 1008),
    ('{"event": 1.5}', 1008),
    ('{"event": true}', 1008),
    ('{"event": null}', 1008),
    ('{"event": 99999999999999999999}', 1008),
    ('{"event": "1; DROP TABLE event_vote"}', 1008),
    ('{"event": 424242}', 4004),
    (b"\x00\x01binary", 1003),
    ("x" * 10000, 1009),
])
def test_bad_input_closes_only_that_client(daemon: Daemon, party: Party, frame: object,
                                           code: int) -> None:
    event_id = party.event()
    track_id = party.track()
    with subscribed(daemon, {"event": event_id}) as bystander:
        with connect(daemon.ws_url, open_timeout=10) as bad:
            bad.send(frame)
            with pytest.raises(ConnectionClosed) as closed:
                bad.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code
            assert closed.value.rcvd.reason
        party.vote(event_id, track_id)
        assert json.loads(bystander.recv(timeout=10))["eid"] == event_id
    assert "Traceback" not in daemon.log()
