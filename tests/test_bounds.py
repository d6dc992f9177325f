"""Work a client can cause is bounded: per connection, per address, in all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import Daemon
from partysense.db.pgservice import Overloaded
from partysense.db.queries import QueryService
from partysense.reads.events import EventDirectory
from partysense.web.resources import EventList
from partysense.wire.protocol import Limits
from tests.fakes import HeldEvents
from tests.support import Party
from tests.wire import (
    Transport,
    close_code,
    factory_without_database,
    handshake,
    messages,
    opened,
    send_json,
)


def client(clock: Clock, limits: Limits, events: Any, host: str = "192.0.2.1",
           subprotocol: str | None = "partysense.v2") -> tuple[Any, Transport]:
    factory = factory_without_database(clock, limits, events=events)
    transport = Transport(peerAddress=IPv4Address("TCP", host, 40000))
    protocol = opened(factory, transport, subprotocol)
    transport.clear()
    return protocol, transport


@pytest.mark.logic
def test_requests_waiting_for_the_database_are_capped() -> None:
    clock = Clock()
    limits = Limits(ping_interval=0, max_pending_requests=8)
    protocol, transport = client(clock, limits, HeldEvents())
    for event in range(1, 9):
        send_json(protocol, {"type": "subscribe", "event": event})
    assert close_code(transport) is None
    send_json(protocol, {"type": "subscribe", "event": 9})  # the ninth waiting
    assert close_code(transport) == 4029
    assert protocol.factory.counters.bad_inputs == {"flood": 1}


@pytest.mark.logic
def test_subscribing_again_counts_against_the_subscribe_budget() -> None:
    clock = Clock()
    limits = Limits(ping_interval=0, max_subscriptions=4, messages_per_second=1000)
    protocol, transport = client(clock, limits, HeldEvents(answer=False))
    for _ in range(14):  # the same event over and over: a snapshot each, before
        send_json(protocol, {"type": "subscribe", "event": 1})
    clock.advance(0)
    errors = [m["error"] for m in messages(transport)]
    # A burst of --max-subscriptions and 8 more, then one a second.
    assert errors == ["unknown_event"] * 12 + ["too_many_subscribes"] * 2
    transport.clear()
    clock.advance(1.0)  # one more a second
    send_json(protocol, {"type": "subscribe", "event": 1})
    send_json(protocol, {"type": "subscribe", "event": 1})
    clock.advance(0)
    assert [m["error"] for m in messages(transport)] == ["unknown_event", "too_many_subscribes"]
    assert close_code(transport) is None  # an error message; the connection stays


@pytest.mark.logic
def test_connections_per_address_are_capped() -> None:
    clock = Clock()
    limits = Limits(ping_interval=0, max_connections_per_ip=2)
    factory = factory_without_database(clock, limits)

    def connect_from(host: str) -> tuple[Any, Transport]:
        transport = Transport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol = factory.buildProtocol(IPv4Address("TCP", host, 40000))
        protocol.makeConnection(transport)
        protocol.dataReceived(handshake())
        clock.advance(0)
        assert transport.value().startswith(b"HTTP/1.1 101 ")
        # What follows the handshake's answer: frames only, as close_code reads them.
        frames = transport.value().split(b"\r\n\r\n", 1)[1]
        transport.clear()
        transport.write(frames)
        return protocol, transport

    first, _ = connect_from("192.0.2.1")
    connect_from("192.0.2.1")
    _, third = connect_from("192.0.2.1")
    assert close_code(third) == 1013
    _, elsewhere = connect_from("192.0.2.2")
    assert close_code(elsewhere) is None
    first.onClose(True, 1000, None)
    _, again = connect_from("192.0.2.1")
    assert close_code(again) is None
    assert factory.per_address == {"192.0.2.1": 2, "192.0.2.2": 1}


@pytest.mark.logic
def test_unknown_events_are_looked_for_at_most_once_a_second() -> None:
    clock = Clock()
    asked: list[Any] = []

    class Queries:
        connected = True

        def runQuery(self, query: Any, params: Any) -> defer.Deferred[list[tuple]]:
            asked.append(params)
            return defer.succeed([])

    events = EventDirectory(Queries(), clock)
    answers: list[bool] = []
    for n in range(100):  # ids that could be events created a moment ago
        events.exists(1 + n).addCallback(answers.append)
    assert len(asked) == 1 and len(answers) == 1
    clock.advance(1.0)  # one more read for the 99 that came after the first
    assert len(asked) == 2 and answers == [False] * 100
    for n in range(100):  # ids far past the newest event: no at once, no read
        events.exists(424242 + n).addCallback(answers.append)
    clock.advance(10.0)
    assert len(asked) == 2 and answers == [False] * 200


@pytest.mark.logic
def test_the_event_list_is_read_once_per_interval_whoever_asks() -> None:
    clock = Clock()
    reads: list[defer.Deferred[list[tuple]]] = []

    class Queries:
        connected = True

        def runQuery(self, query: Any, params: Any = None) -> defer.Deferred[list[tuple]]:
            reads.append(defer.Deferred())
            return reads[-1]

    page = EventList(Queries(), clock, ttl=5.0)
    requests = [DummyRequest([b""]) for _ in range(50)]
    for request in requests:
        page.render_GET(request)
    assert len(reads) == 1
    reads[0].callback([(3, "Friday")])
    assert all(json.loads(b"".join(r.written)) == [{"id": 3, "title": "Friday"}]
               for r in requests)
    page.render_GET(DummyRequest([b""]))
    assert len(reads) == 1
    clock.advance(5.0)
    page.render_GET(DummyRequest([b""]))
    assert len(reads) == 2


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_queries_past_the_cap_are_refused_at_once(db_dsn: str) -> None:
    from twisted.internet import reactor

    queries = QueryService(db_dsn, reactor, max_waiting=10)
    queries.startService()
    try:
        await queries.whenConnected()
        answers = await defer.DeferredList(
            [queries.runQuery("SELECT pg_sleep(0.01)") for _ in range(25)], consumeErrors=True)
        refused = [result for ok, result in answers if not ok]
        assert len(refused) == 15 and all(f.check(Overloaded) for f in refused)
        assert queries.refused == 15 and queries.waiting == 0
        assert queries.connected
    finally:
        await queries.stopService()


@pytest.mark.daemon
def test_a_snapshot_loop_is_held_to_the_subscribe_budget(
        db_dsn: str, tmp_path: Path, party: Party) -> None:
    """The review's attack: one v2 client re-subscribing to one event as fast as allowed."""
    event_id = party.event()
    party.vote(event_id, party.track())
    with Daemon(db_dsn, tmp_path, "--max-subscriptions", "8") as daemon, \
            connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as attacker:
        for _ in range(40):  # the message rate limit's burst, all at once
            attacker.send(json.dumps({"type": "subscribe", "event": event_id}))
        answers = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                answers.append(json.loads(attacker.recv(timeout=10)))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4029
    snapshots = sum(a["type"] == "snapshot" for a in answers)
    refused = sum(a.get("error") == "too_many_subscribes" for a in answers)
    # A burst of --max-subscriptions and 8 more (16; one more a second, and the
    # answers take far less), then "too_many_subscribes" 4 times, then closed.
    assert 16 <= snapshots <= 18 and 4 <= refused <= 4 * (snapshots - 15)
    assert snapshots + refused == len(answers)


@pytest.mark.logic
def test_the_event_list_answers_at_once_when_the_database_is_away() -> None:
    class Away:
        connected = False  # connecting: the list does not wait for it (--grace is for clients)

        def runQuery(self, query: Any, params: Any = None) -> defer.Deferred[list[tuple]]:
            raise AssertionError("not asked while there is no connection")

    request = DummyRequest([b""])
    EventList(Away(), Clock()).render_GET(request)
    assert request.finished and request.responseCode == 503


@pytest.mark.logic
def test_behind_trusted_proxies_the_forwarded_address_is_counted() -> None:
    clock = Clock()
    factory = factory_without_database(clock, Limits(ping_interval=0, max_connections_per_ip=1))
    factory.setProtocolOptions(trustXForwardedFor=1)
    proxy = IPv4Address("TCP", "192.0.2.1", 40000)  # every client comes through it

    def through_proxy(client: str) -> Transport:
        transport = Transport(peerAddress=proxy)
        protocol = factory.buildProtocol(proxy)
        protocol.makeConnection(transport)
        protocol.dataReceived(handshake().replace(
            b"\r\n\r\n", f"\r\nX-Forwarded-For: 203.0.113.9, {client}\r\n\r\n".encode()))
        clock.advance(0)
        return transport

    through_proxy("198.51.100.7")
    through_proxy("198.51.100.8")  # another guest behind the same proxy: let in
    refused = through_proxy("198.51.100.7")  # the first guest's second connection
    assert b"more than 1 connections from your address" in refused.value()
    # Only the last --trusted-proxies addresses count: 203.0.113.9 was the client's own claim.
    assert factory.per_address == {"198.51.100.7": 1, "198.51.100.8": 1}
