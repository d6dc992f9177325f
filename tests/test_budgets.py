"""Budgets per address (partysense/core/budgets.py), the event directory
(partysense/reads/events.py) and the pulse's limits per address, on a Clock.

The daemon-level tests (a real reconnect loop, replay floods, a venue
behind one NAT address) are in tests/test_budgets_daemon.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from partysense.core.budgets import AddressBuckets, budgets_for
from partysense.dialects.v2 import SUBPROTOCOL
from partysense.reads import events as events_module
from partysense.reads.events import LOOKBACK, EventDirectory
from partysense.web.pulse import MAX_RUNNING_PER_ADDRESS, EventPulse, PulseReads
from partysense.wire.protocol import Limits
from tests.fakes import AlwaysListening, HeldQueries, HeldReplays, IdQueries, NoEvents
from tests.test_pulse import rows as pulse_rows
from tests.wire import Transport, factory_without_database, messages, opened, send_json

pytestmark = pytest.mark.logic


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = AddressBuckets(rate=2.0, burst=10)
    assert all(bucket.take("a", 0.0) for _ in range(10))
    assert not bucket.take("a", 0.0)
    assert bucket.take("b", 0.0)              # another address has its own
    assert bucket.retry_after("a", 0.0) == 1  # half a second, said as whole seconds
    assert not bucket.take("a", 0.4)          # 0.8 tokens
    assert bucket.take("a", 0.5) and not bucket.take("a", 0.5)
    assert bucket.level("a", 1000.0) == 10    # never past the burst
    assert bucket.refused == 3


def test_a_cost_known_afterwards_is_charged_as_debt_and_refunded() -> None:
    rows = AddressBuckets(rate=100.0, burst=1000)
    assert rows.take("a", 0.0, cost=5000)     # more than a burst: taken when full
    assert rows.level("a", 0.0) == -4000
    assert not rows.take("a", 10.0, cost=500)  # -3000 after 10 s
    rows.charge("a", 10.0, -4000)              # the replay sent far fewer rows
    assert rows.level("a", 10.0) == 1000
    rows.charge("a", 10.0, 10**9)              # at most one burst of debt
    assert rows.level("a", 10.0) == -1000


def test_the_table_of_addresses_is_bounded() -> None:
    bucket = AddressBuckets(rate=1.0, burst=2, max_addresses=100)
    for n in range(10_000):  # an attacker with many addresses, each spending all it has
        address = f"10.0.{n // 256}.{n % 256}"
        assert bucket.take(address, 0.0) and bucket.take(address, 0.0)
    assert len(bucket) == 100  # the least recently seen were forgotten
    assert bucket.level("10.0.39.15", 0.0) == 0   # the last one seen is remembered
    assert bucket.level("10.0.0.1", 0.0) == 2     # the first is not: a full budget again
    bucket.take("10.0.0.1", 10.0)  # ten seconds on: every bucket has filled up again
    assert len(bucket) == 1  # the full ones were swept to make room


def test_a_full_bucket_is_forgotten() -> None:
    bucket = AddressBuckets(rate=1.0, burst=2)
    bucket.take("a", 0.0)
    assert len(bucket) == 1
    bucket.charge("a", 5.0, 0)  # refilled by now: nothing to remember
    assert len(bucket) == 0


def test_reconnecting_does_not_reset_the_subscribe_budget() -> None:
    """The finding: 16 connections × 40 subscribes, closed, again and again."""
    clock = Clock()
    limits = Limits(ping_interval=0, max_subscriptions=32)
    factory = factory_without_database(clock, limits, events=NoEvents(),
                                       budgets=budgets_for(4))  # 8 at once, 0.4/s

    def connect(host: str = "127.0.0.1") -> tuple[Any, Transport]:
        transport = Transport(peerAddress=IPv4Address("TCP", host, 40000))
        client = opened(factory, transport, "partysense.v2", host=host)
        transport.clear()
        return client, transport

    def errors(transport: Transport) -> list[str]:
        clock.advance(0)
        return [m["error"] for m in messages(transport)]

    answers: list[str] = []
    for _ in range(3):
        client, transport = connect()
        for n in range(4):
            send_json(client, {"type": "subscribe", "event": 1000 + n})
        answers += errors(transport)
        client.connectionLost(Failure(ConnectionDone()))
    assert answers == ["unknown_event"] * 8 + ["too_many_subscribes"] * 4
    clock.advance(2.5)  # one more per 2.5 s
    client, transport = connect()
    send_json(client, {"type": "subscribe", "event": 1})
    send_json(client, {"type": "subscribe", "event": 2})
    assert errors(transport) == ["unknown_event", "too_many_subscribes"]
    # Another address is not disturbed.
    other, other_transport = connect("192.0.2.9")
    send_json(other, {"type": "subscribe", "event": 1})
    assert errors(other_transport) == ["unknown_event"]


def test_unknown_ids_cost_at_most_one_read_a_second() -> None:
    clock, queries = Clock(), IdQueries([1, 2, 3])
    directory = EventDirectory(queries, clock)
    found: list[bool] = []
    for n in range(10_000):  # ten seconds of a client trying an id per millisecond
        directory.exists(4 + n % 500).addCallback(found.append)  # could be new events
        directory.exists(10_000 + n).addCallback(found.append)   # cannot
        directory.exists(2).addCallback(found.append)
        clock.advance(0.001)
    clock.advance(1)  # the last misses' read
    assert found.count(True) == 10_000 and found.count(False) == 20_000
    assert len(queries.asked) <= 12
    # Without leave to look again, a miss is answered from memory at once.
    asked = len(queries.asked)
    assert directory.exists(4, look_again=False).result is False
    assert len(queries.asked) == asked


def test_an_event_created_a_moment_ago_is_found_by_the_next_read() -> None:
    clock, queries = Clock(), IdQueries([1, 2, 3])
    directory = EventDirectory(queries, clock)
    assert directory.exists(3).result is True
    queries.ids.append(4)  # created now, just after the read
    answer = directory.exists(4)
    assert not answer.called  # it waits for the next read, a second after the last
    clock.advance(1)
    assert answer.result is True and len(queries.asked) == 2


def test_a_new_event_is_found_and_a_deleted_one_forgotten() -> None:
    clock, queries = Clock(), IdQueries([i for i in range(1, 5001) if i != 4990])
    directory = EventDirectory(queries, clock, refresh_every=5, reload_every=60)
    directory.startService()
    assert directory.exists(5000).result is True
    queries.ids += [5001]
    clock.advance(1)
    assert directory.exists(5001).result is True  # a miss looks again
    # Each refresh reads only the newest ids, from LOOKBACK below the newest known.
    assert queries.asked[-1] == (5000 - LOOKBACK, events_module.PAGE)
    queries.ids.remove(3)
    queries.ids += [5003, 4990]  # committed out of id order
    clock.advance(5)  # the timer's refresh
    assert directory.exists(4990, look_again=False).result is True
    assert directory.exists(3, look_again=False).result is True  # until the reload
    clock.advance(60)
    assert directory.exists(3, look_again=False).result is False
    assert len(directory) == 5001
    directory.stopService()


def test_the_ids_are_read_in_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "PAGE", 100)
    clock, queries = Clock(), IdQueries(list(range(1, 351)))
    directory = EventDirectory(queries, clock)
    assert directory.exists(350).result is True
    assert queries.asked == [(0, 100), (100, 100), (200, 100), (300, 100)]


def pulse_request(resource: EventPulse, event_id: int, host: str) -> DummyRequest:
    request = DummyRequest([b"pulse"])
    request.prepath = [b"api", b"events", str(event_id).encode()]
    request.client = IPv4Address("TCP", host, 40000)
    resource.render_GET(request)
    return request


def test_the_pulse_of_no_event_is_a_404_without_a_query() -> None:
    clock, queries = Clock(), HeldQueries()
    directory = EventDirectory(IdQueries([7]), clock)
    resource = EventPulse(PulseReads(queries, clock), clock,
                          exists=lambda address, event_id: directory.exists(event_id))
    for event_id in range(5000, 6000):
        assert pulse_request(resource, event_id, "192.0.2.1").responseCode == 404
    assert queries.asked == []
    pulse_request(resource, 7, "192.0.2.1")
    assert len(queries.asked) == 1


def test_one_address_reading_many_pulses_does_not_starve_another() -> None:
    clock, queries = Clock(), HeldQueries()
    resource = EventPulse(PulseReads(queries, clock), clock)
    hammer = [pulse_request(resource, event_id, "192.0.2.66") for event_id in range(1, 9)]
    assert len(queries.asked) == MAX_RUNNING_PER_ADDRESS
    assert {r.responseCode for r in hammer[MAX_RUNNING_PER_ADDRESS:]} == {429}
    chart = pulse_request(resource, 100, "192.0.2.7")
    assert len(queries.asked) == MAX_RUNNING_PER_ADDRESS + 1
    queries.asked[-1][1].callback(pulse_rows())
    assert chart.responseCode == 200


def test_a_resume_reserves_its_replay_from_the_address_and_gives_back_the_rest() -> None:
    """Catch-up 10,000 changes back, asked over and over from new connections."""
    from partysense.db.changelog import Replay

    clock = Clock()
    limits = Limits(ping_interval=0)
    factory = factory_without_database(clock, limits, events=NoEvents(),
                                       listener=AlwaysListening(last_seq=10_000),
                                       budgets=budgets_for(4))  # 800 rows, then 40/s
    replays = HeldReplays()
    object.__setattr__(factory.dialects[SUBPROTOCOL].keywords["shared"], "reads", replays)

    def resume() -> Transport:
        transport = Transport()
        client = opened(factory, transport, SUBPROTOCOL)
        transport.clear()
        send_json(client, {"type": "subscribe", "event": "ALL", "cursor": 0})
        clock.advance(0)
        return transport

    first = resume()            # may send up to 10,000 rows: all of them reserved
    assert len(replays.asked) == 1 and messages(first) == []
    refused = messages(resume())
    assert refused[0]["error"] == "too_many_subscribes"
    assert "changes replayed to your address" in refused[0]["message"]
    assert len(replays.asked) == 1  # no read for it
    replays.asked[0].callback(Replay([], newest=10_000))  # it sent none: given back
    clock.advance(0)
    assert messages(first)[0]["type"] == "subscribed"
    clock.advance(0.1)  # the one row it was charged, refilled
    resume()
    assert len(replays.asked) == 2


def test_misses_waiting_for_a_read_are_answered_when_the_daemon_stops() -> None:
    from partysense.db.pgservice import NotConnected

    clock, queries = Clock(), IdQueries([1])
    directory = EventDirectory(queries, clock)
    directory.startService()
    assert directory.exists(1).result is True
    waiting = directory.exists(2)  # the next read is a second away
    failures: list[Any] = []
    waiting.addErrback(failures.append)
    directory.stopService()
    assert failures and failures[0].check(NotConnected)
    assert not clock.getDelayedCalls()
