"""Presence, the logic: one statement per interval whatever the clients, the
totals announced only when they change, encoded once, and a new subscriber's
estimate corrected by the next report (partysense/db/presence.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger

from partysense.core.hub import Delivery, Hub
from partysense.core.notice import Notice
from partysense.db.presence import LIFETIME, REPORT_QUERY, PresenceService, event_counts
from partysense.web.sseframes import presence_bytes
from tests.fakes import ListenedChannels

pytestmark = pytest.mark.logic

INTERVAL = 5.0


class Queries:
    """The query connection: records each statement, answered by the test."""

    def __init__(self) -> None:
        self.connected = True
        self.calls: list[tuple[Any, Any, defer.Deferred[list[tuple]]]] = []

    def runQuery(self, query: Any, params: Any = None) -> defer.Deferred[list[tuple]]:
        d: defer.Deferred[list[tuple]] = defer.Deferred()
        self.calls.append((query, params, d))
        return d

    def answer(self, rows: list[tuple]) -> None:
        self.calls[-1][2].callback(rows)


encoded: list[str] = []


class Watcher:
    """A subscriber that takes notices (as v2 and SSE ones do)."""

    def __init__(self, wire_format: str = "v2") -> None:
        self.wire_format = wire_format
        self.notices: list[Any] = []

    def encode(self, delivery: Delivery) -> bytes:
        return b""

    def deliver(self, delivery: Delivery, frame: Any) -> None:
        pass

    def encode_notice(self, notice: Notice) -> bytes:
        encoded.append(self.wire_format)
        return self.wire_format.encode() + b":" + notice.json

    def notice(self, frame: Any) -> None:
        self.notices.append(frame)


class SeedWatcher:
    """A seed client: counted, told nothing (no encode_notice)."""

    wire_format = "seed"

    def encode(self, delivery: Delivery) -> bytes:
        return b""

    def deliver(self, delivery: Delivery, frame: Any) -> None:
        pass


def made(interval: float = INTERVAL) -> tuple[Clock, Queries, Hub, PresenceService]:
    clock, queries = Clock(), Queries()
    hub = Hub(ListenedChannels())
    presence = PresenceService(queries, hub, clock, interval)
    presence.startService()
    return clock, queries, hub, presence


def body(frame: bytes) -> dict[str, Any]:
    return json.loads(frame.split(b":", 1)[1])


def test_one_statement_per_interval_whatever_the_number_of_clients() -> None:
    clock, queries, hub, presence = made()
    for n in range(3000):
        hub.subscribe(f"event_{n % 3 + 1}", Watcher())
    for _ in range(500):
        hub.subscribe("firehose", Watcher())
    for _ in range(200):
        hub.subscribe("event_2", SeedWatcher())
    for interval in range(1, 5):
        clock.advance(INTERVAL)
        assert len(queries.calls) == interval
        queries.answer([])
    query, params, _ = queries.calls[-1]
    assert query == REPORT_QUERY and "%s" in query  # arrays bound, not spliced in
    daemon, events, watchers, lifetime = params
    assert daemon == str(presence.daemon)
    # The firehose is no event; seed clients count.
    assert (events, watchers) == ([1, 2, 3], [1000, 1200, 1000])
    assert lifetime == INTERVAL * LIFETIME
    assert presence.statements == 4


def test_totals_are_announced_when_they_change_encoded_once_per_format() -> None:
    clock, queries, hub, presence = made()
    v2 = [Watcher("v2") for _ in range(50)]
    sse = [Watcher("sse") for _ in range(10)]
    seed = SeedWatcher()
    for watcher in [*v2, *sse]:
        hub.subscribe("event_7", watcher)
    hub.subscribe("event_7", seed)
    hub.subscribe("event_8", Watcher())
    encoded.clear()
    clock.advance(INTERVAL)
    queries.answer([(7, 61 + 40), (8, 1)])  # 40 watch event 7 on other daemons
    assert sorted(encoded) == ["sse", "v2", "v2"]  # once per format and event
    frame = v2[0].notices[0]
    assert all(w.notices == [frame] for w in v2)  # the same bytes object for all
    assert body(frame) == {"type": "presence", "event": 7, "watchers": 101}
    assert body(sse[3].notices[0])["watchers"] == 101

    clock.advance(INTERVAL)
    queries.answer([(7, 101), (8, 1)])  # nothing changed: nothing sent
    assert [len(w.notices) for w in (v2[0], sse[0])] == [1, 1]

    clock.advance(INTERVAL)
    queries.answer([(7, 90), (8, 1)])  # others left
    assert body(v2[5].notices[-1])["watchers"] == 90
    assert len(v2[5].notices) == 2
    assert presence.notices_sent == 61 + 60


def test_a_slow_statement_is_never_doubled() -> None:
    clock, queries, hub, presence = made()
    hub.subscribe("event_1", Watcher())
    clock.advance(INTERVAL)
    clock.advance(INTERVAL * 10)
    clock.pump([INTERVAL] * 10)
    assert len(queries.calls) == 1  # the loop waits for the answer (pgservice's deadline)
    queries.answer([(1, 1)])
    clock.advance(INTERVAL)
    assert len(queries.calls) == 2


def test_no_statement_without_the_database() -> None:
    clock, queries, hub, presence = made()
    queries.connected = False
    hub.subscribe("event_1", Watcher())
    clock.pump([INTERVAL] * 5)
    assert queries.calls == []


def test_a_new_subscriber_is_told_an_estimate_corrected_by_the_next_report() -> None:
    clock, queries, hub, presence = made()
    first = Watcher()
    hub.subscribe("event_4", first)
    clock.advance(INTERVAL)
    queries.answer([(4, 10)])  # 9 on other daemons
    newcomer = Watcher()
    hub.subscribe("event_4", newcomer)
    assert presence.current(4).watchers == 11  # 9 elsewhere + 2 here
    # Meanwhile one left elsewhere and someone left here: the total is 10 again,
    # unchanged, but the newcomer was told 11: it is announced anyway.
    hub.unsubscribe("event_4", first)
    hub.subscribe("event_4", Watcher())
    clock.advance(INTERVAL)
    queries.answer([(4, 10)])
    assert [body(f)["watchers"] for f in newcomer.notices] == [10]
    clock.advance(INTERVAL)
    queries.answer([(4, 10)])
    assert len(newcomer.notices) == 1  # and then only changes again


def test_a_failed_report_is_logged_once_and_counts_are_kept() -> None:
    clock, queries, hub, presence = made()
    watcher = Watcher()
    hub.subscribe("event_1", watcher)
    logged: list[str] = []
    presence.log = Logger(observer=lambda event: logged.append(event.get("log_format", "")))
    for _ in range(3):
        clock.advance(INTERVAL)
        queries.calls[-1][2].errback(RuntimeError("permission denied for function"))
    assert presence.failures == 3
    assert sum("Presence report failed" in line for line in logged) == 1
    clock.advance(INTERVAL)
    queries.answer([(1, 3)])
    assert body(watcher.notices[-1])["watchers"] == 3
    assert any("work again" in line for line in logged)


def test_a_clean_stop_takes_this_daemons_watchers_out() -> None:
    clock, queries, hub, presence = made()
    hub.subscribe("event_1", Watcher())
    clock.advance(INTERVAL)
    queries.answer([(1, 1)])
    stopped = presence.stopService()
    _, params, d = queries.calls[-1]
    assert params[1:3] == ([], [])
    d.callback([])
    assert stopped is not None and stopped.called
    clock.advance(INTERVAL * 3)
    assert len(queries.calls) == 2  # the loop is stopped


def test_the_messages() -> None:
    notice = Notice(3, 12)
    assert json.loads(notice.json) == {"type": "presence", "event": 3, "watchers": 12}
    # No id: line, so Last-Event-ID stays the last change's seq.
    assert presence_bytes(notice) == (b'event: presence\ndata: '
                                      b'{"type":"presence","event":3,"watchers":12}\n\n')
    assert event_counts({"firehose": 4, "event_2": 3, "event_5": 0, "bogus": 1}) == {2: 3}


def test_a_statement_that_raises_does_not_stop_the_reports() -> None:
    clock, queries, hub, presence = made()
    hub.subscribe("event_1", Watcher())
    calls = []

    def broken(query: Any, params: Any = None) -> Any:
        calls.append(params)
        raise RuntimeError("a bug below")

    queries.runQuery = broken  # type: ignore[method-assign]
    clock.pump([INTERVAL] * 3)
    assert len(calls) == 3 and presence.failures == 3
