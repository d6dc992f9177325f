"""When the change log starts over, every v2 subscription gets fresh tallies.

A WAL slot made again (or a database restored from a backup) empties the log
and recounts the tallies: a client's tallies from before miss what was
committed in between, and its cursor no longer continues anything. The
source says so (``ChangeSource.on_start_over``); the kept reads go
(reads/sharedreads.py) and the hub has each v2 subscription take a fresh
snapshot, sent with ``"reset": true`` (core/hub.py, dialects/v2.py). Built
from the interfaces: the reads answer when the test says.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from partysense.core.change import Change
from partysense.core.errors import TRY_AGAIN_LATER
from partysense.core.hub import Hub
from partysense.db.changelog import Snapshot
from partysense.db.errors import NotConnected
from partysense.dialects.dialect import ClientCounters, Shared
from partysense.dialects.seed import SeedSession
from partysense.dialects.v2 import V2Session
from partysense.reads.sharedreads import SharedReads
from tests.fakes import AtOnce, Following, ManualQueries, RecordingClient

pytestmark = pytest.mark.logic

TRACK = {"tid": 4, "track": "Song", "artist": "Band", "down": 0}


class Channels:
    """The source as the hub sees it: every LISTEN and UNLISTEN, in order."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def listen(self, channel: str) -> None:
        self.said.append(f"LISTEN {channel}")

    def unlisten(self, channel: str) -> None:
        self.said.append(f"UNLISTEN {channel}")

    def observe(self, observer: Any) -> None:
        pass


class HeldReads(AtOnce):
    """Snapshots answered when the test says, in the order they were asked."""

    def __init__(self) -> None:
        self.asked: list[defer.Deferred[Any]] = []

    def snapshot(self, event_id: int | None) -> defer.Deferred[Any]:
        asked: defer.Deferred[Any] = defer.Deferred()
        self.asked.append(asked)
        return asked

    def answer(self, index: int, cursor: int, up: int) -> None:
        self.asked[index].callback((Snapshot(cursor, "Friday", [{**TRACK, "up": up}]), []))


class Closable(RecordingClient):
    def __init__(self) -> None:
        super().__init__()
        self.closed: tuple[int, str] | None = None

    def close_with(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def change(seq: int) -> Change:
    return Change(event_id=3, seq=seq, committed_at=None, op="insert", vote_id=seq,
                  track_id=4, up=True, prev=None, event_title="Friday", track_name="Song",
                  artist="Band", truncated=False, payload=b"{}")


def party() -> tuple[Hub, Channels, HeldReads, V2Session, Closable]:
    channels = Channels()
    hub = Hub(channels)  # type: ignore[arg-type]  # only what the hub uses
    reads = HeldReads()
    client = Closable()
    shared = Shared(hub=hub, listener=AtOnce(), reads=reads,  # type: ignore[arg-type]
                    events=AtOnce(), counters=ClientCounters(), clock=Clock())
    return hub, channels, reads, V2Session(client, shared), client


def subscribe(session: V2Session, **more: Any) -> None:
    session.received(json.dumps({"type": "subscribe", "event": 3, "id": "a", **more}))


def test_a_live_subscription_gets_a_fresh_snapshot_sent_unasked_with_reset() -> None:
    hub, channels, reads, session, client = party()
    subscribe(session)
    reads.answer(0, cursor=10, up=1)
    hub.publish("event_3", change(11))
    assert client.types() == ["snapshot", "frame"]
    hub.start_over()
    assert len(reads.asked) == 2  # read afresh
    hub.publish("event_3", change(12))  # held until the fresh snapshot is out...
    hub.publish("event_3", change(13))
    assert client.sent == []
    reads.answer(1, cursor=12, up=7)
    snapshot, *after = client.sent
    assert snapshot == {"type": "snapshot", "event": 3, "cursor": 12, "title": "Friday",
                        "tracks": [{**TRACK, "up": 7}], "reset": True}  # no id: unasked
    assert after == [{"type": "frame"}]  # ...then only what is past its cursor (13)
    hub.publish("event_3", change(14))
    assert client.types() == ["snapshot", "frame", "frame"]
    # The channel never had no subscriber: no UNLISTEN, no second LISTEN.
    assert channels.said == ["LISTEN event_3"]
    assert session.subscriptions == 1 and hub.subscriber_count("event_3") == 1


def test_a_snapshot_read_before_the_reset_is_not_sent_the_fresh_one_answers_the_subscribe(
        ) -> None:
    hub, _, reads, session, client = party()
    subscribe(session)
    hub.start_over()  # while the first snapshot was being read
    reads.answer(0, cursor=10, up=1)  # from before the reset: never sent
    assert client.sent == []
    reads.answer(1, cursor=15, up=3)
    assert client.sent == [{"type": "snapshot", "event": 3, "id": "a", "cursor": 15,
                            "title": "Friday", "tracks": [{**TRACK, "up": 3}],
                            "reset": True}]


def test_a_subscription_that_cannot_be_read_again_is_closed_to_resume_by_cursor() -> None:
    hub, _, reads, session, client = party()
    subscribe(session)
    reads.answer(0, cursor=10, up=1)
    client.types()
    hub.start_over()
    reads.asked[1].errback(NotConnected("the database went away"))
    assert client.closed is not None and client.closed[0] == TRY_AGAIN_LATER
    assert client.sent == []


def test_seed_subscribers_are_left_as_they_are_and_others_still_start_over() -> None:
    hub, _, reads, session, client = party()
    seed_client = RecordingClient()
    seed = SeedSession(seed_client, Shared(hub=hub, listener=AtOnce(),  # type: ignore[arg-type]
                                           reads=AtOnce(),
                                           events=AtOnce(), counters=ClientCounters(),
                                           clock=Clock()))
    seed.received(json.dumps({"event": 3}))
    subscribe(session)
    reads.answer(0, cursor=10, up=1)
    client.types()
    hub.start_over()
    reads.answer(1, cursor=11, up=2)
    assert client.types() == ["snapshot"]
    hub.publish("event_3", change(12))
    assert len(seed_client.sent) == 1 and hub.subscriber_count("event_3") == 2


def test_shared_reads_keep_nothing_from_before_the_start_over() -> None:
    queries = ManualQueries()
    listener = Following()
    listener.floors["event_3"] = 0
    reads = SharedReads(queries, Clock(), listener=listener, follow=True)  # type: ignore[arg-type]
    reads.snapshot(3)
    queries.running[0][2].callback(Snapshot(10, "Friday", [{**TRACK, "up": 1}]))
    got: list[Any] = []
    reads.snapshot(3).addCallback(got.append)
    assert len(queries.running) == 1 and got[0][0].cursor == 10  # kept, from memory
    reads.snapshot(4)  # a read running across the start over...
    reads.start_over()
    queries.running[1][2].callback(Snapshot(12, "Saturday", [{**TRACK, "up": 2}]))
    reads.snapshot(3)  # what was kept is gone
    assert len(queries.running) == 3
    reads.snapshot(4)  # ...was not kept either
    assert len(queries.running) == 4
