"""The daemon as its users run it: twistd, a real PostgreSQL, foreign WebSocket clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from harness.faults import committed
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
        # (event_<first> may stay LISTENed a while: --linger.)
        wait_for(lambda: f"event_{second_event}" in daemon.health()[1]["channels"], 10,
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


def test_with_a_write_delay_every_vote_still_arrives_once_in_order(
        db_dsn: str, tmp_path: Path, party: Party) -> None:
    """--write-delay holds a client's frames to send them together: none is lost or doubled."""
    from tests.test_exact_tallies import Watcher

    event_id = party.event("Delayed")
    tracks = [party.track(f"Track {n}") for n in range(3)]
    party.vote(event_id, tracks[0])  # before the v2 client: in its snapshot
    with Daemon(db_dsn, tmp_path, "--write-delay", "50") as daemon:
        # The seed client first: its subscription is what brings the channel up.
        with subscribed(daemon, {"event": event_id}, channels=1) as seed:
            watcher = Watcher(daemon, event_id)
            before = committed(db_dsn, event_id)  # empty in WAL mode: the relay began later
            after = before[-1][0] if before else 0
            for n in range(40):
                party.vote(event_id, tracks[n % 3], up=n % 4 != 0)
            log = [change for change in committed(db_dsn, event_id) if change[0] > after]
            received = [json.loads(seed.recv(timeout=10)) for _ in log]
        expected = party.tallies(event_id)
        wait_for(lambda: watcher.tallies() == expected, 10,
                 f"v2 tallies {watcher.tallies()} to equal SQL {expected}")
        watcher.disconnect()
        assert watcher.problems == []
    assert [(m["seq"], m["vote"], m["op"]) for m in received] == log
