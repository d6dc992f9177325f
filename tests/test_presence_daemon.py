"""Presence on one daemon, as clients see it: asked for, it follows the snapshot
(or "subscribed" on a resume) and each change of the count; not asked for, a
client written before it sees nothing new; the firehose is neither counted nor
told; SSE streams get ``event: presence`` with ``?presence=1`` only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.daemon import Daemon, wait_for
from tests.sse import Stream
from tests.support import Party
from tests.test_v2 import ask, receive, v2

pytestmark = pytest.mark.daemon


@pytest.fixture
def quick(db_dsn: str, tmp_path: Path) -> Iterator[Daemon]:
    with Daemon(db_dsn, tmp_path, "--no-demo", "--presence-interval", "1") as value:
        yield value


def presence_events(stream: Stream) -> list[int]:
    return [json.loads(e["data"])["watchers"] for e in list(stream.events)
            if e.get("event") == "presence"]


def test_presence_is_told_to_those_who_ask_and_counts_everybody(
        quick: Daemon, party: Party) -> None:
    event_id = party.event("Counted")
    track_id = party.track("Song")
    with v2(quick) as old, v2(quick) as asking, v2(quick) as firehose:
        # A client written before presence: snapshot, then the change, nothing between.
        assert ask(old, type="subscribe", event=event_id)["type"] == "snapshot"
        assert ask(firehose, type="subscribe", event="ALL", presence=True)["type"] == \
            "subscribed"
        snapshot = ask(asking, type="subscribe", event=event_id, presence=True, id="p")
        assert snapshot["type"] == "snapshot"
        # Right after its snapshot: itself and the old client; not the firehose.
        assert receive(asking) == {"type": "presence", "event": event_id, "watchers": 2}
        party.vote(event_id, track_id)
        assert receive(old)["type"] == "change"
        assert receive(firehose)["type"] == "change"  # no presence for ALL
        assert receive(asking)["type"] == "change"

        # An SSE stream that asks: counted, told at once and on each change.
        stream = Stream(quick.port, f"/events/{event_id}/stream?presence=1")
        plain = Stream(quick.port, f"/events/{event_id}/stream")
        try:
            wait_for(lambda: presence_events(stream)[-1:] == [4], 15,
                     f"the stream to see 4 here (it saw {presence_events(stream)})")
            message = receive(asking)
            assert message == {"type": "presence", "event": event_id, "watchers": 4}, message
            # The stream's resume point stays the change log's: no id on presence.
            assert all("id" not in e for e in stream.events if e.get("event") == "presence")
        finally:
            stream.close()
        wait_for(lambda: json.loads(asking.recv(timeout=10)) ==
                 {"type": "presence", "event": event_id, "watchers": 3}, 15,
                 "the count to drop when the stream left")
        plain.close()
        assert presence_events(plain) == []
        wait_for(lambda: json.loads(asking.recv(timeout=10)).get("watchers") == 2, 15,
                 "the count to drop when the plain stream left")

        # Bad input is refused as a message; the connection stays.
        error = ask(asking, type="subscribe", event=event_id, presence="yes", id="bad")
        assert (error["type"], error["error"]) == ("error", "bad_request")
        # A resume that asks: "subscribed", the count, then the replay.
        answer = ask(asking, type="subscribe", event=event_id, presence=True,
                     cursor=snapshot["cursor"], id="r")
        assert answer["type"] == "subscribed", answer
        assert receive(asking) == {"type": "presence", "event": event_id, "watchers": 2}
        assert receive(asking)["type"] == "change"  # the vote after the cursor
