"""Races between a subscription and whatever else happens meanwhile.

A v2 subscribe waits for the database three times (does the event exist,
is the channel LISTENed, the snapshot); the client may leave, unsubscribe or
subscribe again while it waits. The session needs only its interfaces
(partysense/dialects/dialect.py): here each is a fake of tests/fakes.py that
answers when the test says, and time is a Clock, so every interleaving is
the test's. The client is a LiveProtocol over a StringTransport
(tests/wire.py), so that its socket fills exactly when the test says.

The races that need PostgreSQL itself (the listener's LISTEN/UNLISTEN
traffic, a lost or busy connection) are in tests/test_subscribe_races_db.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from partysense.core.change import Change, parse_change
from partysense.core.hub import Hub
from partysense.db.changelog import Snapshot
from partysense.dialects.dialect import ClientCounters, Shared
from partysense.reads.events import PAGE, EventDirectory
from partysense.tap import dialect_table
from partysense.wire.protocol import Limits, LiveFactory, LiveProtocol
from tests.fakes import HeldEvents, HeldListener, HeldQueries, HeldReads
from tests.support import nonzero, tally
from tests.wire import Transport, messages, opened, send_json

pytestmark = pytest.mark.logic

EVENT, TRACK = 3, 11
CHANNEL = f"event_{EVENT}"


@dataclass
class Wired:
    """The real factory, dialects and hub over fakes of what they ask."""

    clock: Clock
    hub: Hub
    listener: HeldListener
    reads: HeldReads
    events: HeldEvents
    factory: LiveFactory
    clients: list[LiveProtocol] = field(default_factory=list)

    def v2(self) -> tuple[LiveProtocol, Transport]:
        transport = Transport()
        protocol = opened(self.factory, transport, "partysense.v2")
        transport.clear()
        self.clients.append(protocol)
        return protocol, transport

    def snapshot_answered(self, cursor: int, up: int) -> None:
        """The oldest snapshot still asked for: ``up`` votes for TRACK as of ``cursor``."""
        asked = [d for _, d in self.reads.snapshots if not d.called]
        tracks = [{"tid": TRACK, "track": "Hush", "artist": "Anna", "up": up, "down": 0}]
        asked[0].callback((Snapshot(cursor=cursor, title="Friday", tracks=tracks), []))
        self.clock.advance(0)


@pytest.fixture
def wired() -> Any:
    clock, listener = Clock(), HeldListener()
    hub, reads, events = Hub(listener), HeldReads(), HeldEvents()
    counters = ClientCounters()
    shared = Shared(hub=hub, listener=listener, reads=reads, events=events,
                    counters=counters, clock=clock)
    factory = LiveFactory(dialect_table(shared), clock, Limits(ping_interval=0), counters)
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    state = Wired(clock, hub, listener, reads, events, factory)
    yield state
    for client in state.clients:
        if client.state != client.STATE_CLOSED:
            client.connectionLost(Failure(ConnectionDone()))


def up_vote(seq: int) -> Change:
    """A new up vote for TRACK, as the trigger writes it."""
    return parse_change(json.dumps({
        "eid": EVENT, "event": "Friday", "track": "Hush", "artist": "Anna", "tid": TRACK,
        "up": True, "op": "insert", "vote": 100 + seq, "prev": None, "seq": seq,
        "truncated": False, "ts": 1_764_320_400.0}))


def changes_after_snapshots(answers: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(cursor, seq) for every change, with the cursor of the snapshot before it."""
    cursor, seen = -1, []
    for answer in answers:
        if answer["type"] == "snapshot":
            cursor = answer["cursor"]
        elif answer["type"] == "change":
            seen.append((cursor, answer["seq"]))
    return seen


def subscribed_with_its_snapshot_queued(wired: Wired) -> tuple[LiveProtocol, Transport]:
    """A v2 client whose socket is full: its first snapshot (cursor 5) waits to be sent."""
    wired.events.answer = True
    protocol, transport = wired.v2()
    transport.producer.pauseProducing()  # its socket is full: the snapshot waits
    send_json(protocol, {"type": "subscribe", "event": EVENT})
    wired.listener.answer(CHANNEL)
    wired.snapshot_answered(cursor=5, up=1)
    assert protocol.outbox.waiting, "the snapshot, queued"
    return protocol, transport


def test_a_client_gone_while_its_event_is_looked_up_leaves_no_subscription(
        wired: Wired) -> None:
    protocol, _ = wired.v2()
    send_json(protocol, {"type": "subscribe", "event": EVENT})
    assert len(wired.events.asked) == 1  # the question is out
    protocol.connectionLost(Failure(ConnectionDone()))
    wired.events.asked[0].callback(True)
    wired.clock.advance(0)
    assert wired.hub.channels == []
    assert not wired.listener.wanted, "no channel LISTENed"


def test_no_change_of_an_unsubscribed_event_after_unsubscribed(wired: Wired) -> None:
    protocol, transport = subscribed_with_its_snapshot_queued(wired)
    wired.listener.hand_on(CHANNEL, up_vote(6))  # held back until the snapshot is out
    send_json(protocol, {"type": "unsubscribe", "event": EVENT})
    transport.producer.resumeProducing()
    wired.clock.advance(0)
    answers = messages(transport)
    assert [a["type"] for a in answers][:2] == ["snapshot", "unsubscribed"]
    assert "change" not in [a["type"] for a in answers[answers.index(answers[1]):]]


def test_subscribing_again_while_the_first_snapshot_waits_sends_no_old_change(
        wired: Wired) -> None:
    protocol, transport = subscribed_with_its_snapshot_queued(wired)
    wired.listener.hand_on(CHANNEL, up_vote(6))
    send_json(protocol, {"type": "subscribe", "event": EVENT})  # restarts it
    wired.listener.answer(CHANNEL)  # LISTENed again (its only subscriber had left)
    wired.snapshot_answered(cursor=6, up=2)  # it holds the vote of seq 6
    assert protocol.outbox.waiting == 2, "the second snapshot, queued"
    wired.listener.hand_on(CHANNEL, up_vote(7))  # after the second snapshot: sent
    transport.producer.resumeProducing()
    wired.clock.advance(0)
    answers = messages(transport)
    assert [a["type"] for a in answers][:2] == ["snapshot", "snapshot"]
    for cursor, seq in changes_after_snapshots(answers):
        assert seq > cursor, f"change {seq} repeats what snapshot {cursor} holds"
    # The second snapshot plus the changes after it are what the log says.
    counts = {t["tid"]: [t["up"], t["down"]] for t in answers[1]["tracks"]}
    for change in answers[2:]:
        if change["type"] == "change":
            tally(counts, change)
    assert nonzero(counts) == {TRACK: (3, 0)}


def test_a_storm_of_clients_joining_one_event_asks_the_database_once() -> None:
    """After a restart every phone of the party subscribes at once: 10,000 identical
    lookups queued on the one connection would starve its probe (deadline 4 s)."""
    queries = HeldQueries()
    events = EventDirectory(queries, Clock())
    answers = defer.gatherResults([events.exists(EVENT) for _ in range(1000)]
                                  + [events.exists(EVENT + 1)])
    assert [params for params, _ in queries.asked] == [(0, PAGE)]  # one read, for all
    queries.asked[0][1].callback([(EVENT,)])
    assert answers.result == [True] * 1000 + [False]
    assert [params for params, _ in queries.asked] == [(0, PAGE)]
