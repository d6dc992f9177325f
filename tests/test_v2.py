"""The partysense.v2 dialect against a real daemon and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from harness.daemon import Daemon
from tests.support import Party, nonzero, tally

pytestmark = pytest.mark.daemon


def v2(daemon: Daemon) -> ClientConnection:
    client = connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10)
    assert client.subprotocol == "partysense.v2"
    return client


def ask(client: ClientConnection, **request: Any) -> dict[str, Any]:
    client.send(json.dumps(request))
    return receive(client)


def receive(client: ClientConnection) -> dict[str, Any]:
    return json.loads(client.recv(timeout=10))


class Tallies:
    """What a v2 client knows: a snapshot plus the changes after it."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.counts = {t["tid"]: [t["up"], t["down"]] for t in snapshot["tracks"]}
        self.cursor = snapshot["cursor"]

    def apply(self, change: dict[str, Any]) -> None:
        assert change["type"] == "change" and change["seq"] > self.cursor
        self.cursor = change["seq"]
        tally(self.counts, change)

    def as_sql_says(self) -> dict[int, tuple[int, int]]:
        return nonzero(self.counts)


def test_snapshot_then_changes_equal_sql(daemon: Daemon, party: Party) -> None:
    event_id = party.event("Snap")
    tracks = [party.track(f"T{i}") for i in range(3)]
    party.vote(event_id, tracks[0], up=True)
    party.vote(event_id, tracks[1], up=False)
    with v2(daemon) as client:
        snapshot = ask(client, type="subscribe", event=event_id, id="s1")
        assert snapshot["type"] == "snapshot" and snapshot["id"] == "s1"
        assert snapshot["title"] == "Snap"
        tallies = Tallies(snapshot)
        assert tallies.as_sql_says() == party.tallies(event_id)
        vote = party.vote(event_id, tracks[2], up=False)  # insert + update
        party.query("DELETE FROM event_vote WHERE id = %s", (vote,))
        for _ in range(3):
            change = receive(client)
            assert change["sub"] == event_id
            tallies.apply(change)
        assert tallies.as_sql_says() == party.tallies(event_id)


def test_resume_from_cursor_has_no_gap_and_no_duplicate(daemon: Daemon, party: Party) -> None:
    event_id = party.event()
    track = party.track()
    with v2(daemon) as client:
        tallies = Tallies(ask(client, type="subscribe", event=event_id))
        party.vote(event_id, track, up=False)  # an insert, then an update
        tallies.apply(receive(client))
        tallies.apply(receive(client))
    # Disconnected: votes go on.
    party.vote(event_id, track, up=False)
    party.vote(event_id, track, up=True)  # only an insert: the update changes nothing
    with v2(daemon) as client:
        answer = ask(client, type="subscribe", event=event_id, cursor=tallies.cursor, id=2)
        assert answer == {"type": "subscribed", "event": event_id, "cursor": tallies.cursor,
                          "id": 2}
        for _ in range(3):
            tallies.apply(receive(client))
        assert tallies.as_sql_says() == party.tallies(event_id)
        assert ask(client, type="ping", id="p") == {"type": "pong", "id": "p"}


def test_firehose_and_several_subscriptions(daemon: Daemon, party: Party) -> None:
    first, second = party.event("A"), party.event("B")
    track = party.track()
    with v2(daemon) as client:
        assert ask(client, type="subscribe", event="ALL")["type"] == "subscribed"
        assert ask(client, type="subscribe", event=first)["type"] == "snapshot"
        party.vote(second, track)
        firehose = receive(client)
        assert (firehose["sub"], firehose["eid"]) == ("ALL", second)
        party.query("INSERT INTO event_vote (event_id, track_id) VALUES (%s, %s)", (first, track))
        got = {receive(client)["sub"], receive(client)["sub"]}
        assert got == {"ALL", first}
        assert ask(client, type="unsubscribe", event="ALL") == {
            "type": "unsubscribed", "event": "ALL"}
        # The firehose may stay LISTENed a while (--linger), but nothing of it is sent:
        # the next vote comes once, for the event, and the pong right after it.
        party.query("INSERT INTO event_vote (event_id, track_id) VALUES (%s, %s)", (first, track))
        assert receive(client)["sub"] == first
        assert ask(client, type="ping") == {"type": "pong"}


@pytest.mark.parametrize(("request_body", "error"), [
    ({"type": "subscribe", "event": 424242}, "unknown_event"),
    ({"type": "subscribe", "event": "x"}, "bad_event_id"),
    ({"type": "subscribe", "event": 1, "cursor": -5}, "bad_request"),
    ({"type": "dance"}, "bad_request"),
    ([1, 2, 3], "bad_request"),
    ({"type": "ping", "id": "x" * 100}, "bad_request"),
])
def test_errors_are_messages_and_the_connection_stays(daemon: Daemon, party: Party,
                                                      request_body: Any, error: str) -> None:
    with v2(daemon) as client:
        client.send(json.dumps(request_body))
        answer = receive(client)
        assert answer["type"] == "error" and answer["error"] == error and answer["message"]
        assert ask(client, type="ping", id=1) == {"type": "pong", "id": 1}
