"""The admin port's status page (/status), in units and in a real headless Chromium.

Screenshots (artifacts/screenshots/): ``status-*``, the page of a daemon with
clients on two events and the firehose, a refused client and votes flowing,
at 1920x1080 and on a 360x740 phone.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from psycopg2.extensions import make_dsn
from twisted.internet.task import Clock
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from harness.daemon import Daemon, wait_for
from partysense.core.hub import Hub
from partysense.dialects.dialect import ClientCounters
from partysense.web.status import CSP, Rates, snapshot
from tests.browser import SECONDS, Screen, screenshot
from tests.fakes import StatusListener
from tests.support import Party


class FakeSubscriber:
    wire_format = "seed"


@pytest.mark.logic
def test_rates_count_frames_and_distinct_changes_per_second() -> None:
    clock, listener = Clock(), StatusListener()
    hub = Hub(listener)
    rates = Rates(hub, listener, clock, step=2.0, span=10.0)
    rates.startService()
    try:
        # One change heard on its event's channel and on the firehose is one vote.
        for seq in (1, 2, 3):
            listener.hear("event_1", seq)
            listener.hear("firehose", seq)
        hub.frames_sent += 8
        clock.advance(2)
        history = rates.history()
        assert history["votes"] == [1.5] and history["frames"] == [4.0]
        for _ in range(10):
            clock.advance(2)
        # Five points fit in ten seconds; the oldest went, quiet ones stay.
        history = rates.history()
        assert history["votes"] == [0.0] * 5 and history["span"] == 10.0
        assert history["until"] == clock.seconds()
    finally:
        rates.stopService()


class FakeFactory:
    def __init__(self) -> None:
        self.clients = {object(), object(), object()}
        self.counters = ClientCounters(bad_inputs={"not_json": 2, "too_slow": 1, "flood": 0},
                                       slow_closed=1)
        self.limits = type("Limits", (), {"max_clients": 100})()
        self.per_address = {"10.0.0.1": 2, "10.0.0.2": 1}

    def clients_by_dialect(self) -> dict[str, int]:
        return {"seed": 2, "v2": 1, "sse": 0}


@pytest.mark.logic
def test_the_snapshot_says_what_the_page_shows() -> None:
    clock, listener = Clock(), StatusListener()
    hub = Hub(listener)
    for channel, count in (("event_1", 2), ("event_2", 1), ("firehose", 1)):
        for _ in range(count):
            hub.subscribe(channel, FakeSubscriber())  # type: ignore[arg-type]
    queries = type("Queries", (), {"state": "disconnected", "reason": "connection refused",
                                   "connected": False})()
    queue = type("Queue", (), {"usage": 0.25})()
    data = snapshot(FakeFactory(), hub, listener, queries, queue,  # type: ignore[arg-type]
                    Rates(hub, listener, clock))
    json.dumps(data)  # the page gets it as JSON
    assert data["database"]["listener"] == {"state": "connected", "connected": True,
                                            "reason": ""}
    assert data["database"]["queries"]["reason"] == "connection refused"
    assert data["database"]["queue_usage"] == 0.25
    assert data["database"]["channels"] == 2 and data["database"]["reconnects"] == 2
    assert data["clients"]["total"] == 3 and data["clients"]["max"] == 100
    assert data["clients"]["firehose"] == 1
    assert data["clients"]["by_event"] == [{"channel": "event_1", "subscribers": 2},
                                           {"channel": "event_2", "subscribers": 1}]
    # Busiest first; kinds never seen are left out.
    assert data["refusals"] == [{"kind": "not_json", "count": 2},
                                {"kind": "too_slow", "count": 1}]
    assert data["addresses"] == [{"address": "10.0.0.1", "clients": 2},
                                 {"address": "10.0.0.2", "clients": 1}]


def subscribed(daemon: Daemon, event: int | str, v2: bool = False) -> ClientConnection:
    if v2:
        client = connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10)
        client.send(json.dumps({"type": "subscribe", "event": event, "id": "s"}))
        assert json.loads(client.recv(timeout=10))["type"] == "snapshot"
    else:
        client = connect(daemon.ws_url, open_timeout=10)
        client.send(json.dumps({"event": event}))
    return client


def refused_once(daemon: Daemon) -> None:
    with connect(daemon.ws_url, open_timeout=10) as client:
        client.send("this is not JSON")
        with pytest.raises(ConnectionClosed):
            client.recv(timeout=10)


def data(daemon: Daemon) -> dict[str, Any]:
    with urllib.request.urlopen(daemon.admin_url + "/status/data", timeout=5) as response:
        return dict(json.load(response))


@pytest.mark.browser
def test_the_status_page_shows_the_daemon(daemon: Daemon, party: Party, screen: Screen) -> None:
    first, second = party.event("Main floor"), party.event("Rooftop")
    track = party.track("One More Time", "Daft Punk")
    with ExitStack() as clients:
        for _ in range(2):
            clients.enter_context(subscribed(daemon, first))
        clients.enter_context(subscribed(daemon, second, v2=True))
        clients.enter_context(subscribed(daemon, "ALL"))
        refused_once(daemon)
        wait_for(lambda: data(daemon)["clients"]["total"] == 4, 15, "four clients counted")

        response = screen.page.goto(f"{daemon.admin_url}/status")
        assert response is not None and response.status == 200
        assert response.headers["content-security-policy"] == CSP
        page = screen.page
        expect(page.locator("#updated")).to_have_attribute("data-state", "ok",
                                                           timeout=15 * SECONDS)
        expect(page.locator("#listener-state")).to_have_attribute("data-state", "connected")
        expect(page.locator("#queries-state")).to_have_attribute("data-state", "connected")
        expect(page.locator("#clients-total")).to_have_text("4")
        expect(page.locator("#channels")).to_have_text("3")  # two events and the firehose
        dialects = page.locator("#dialects tbody")
        expect(dialects.locator('tr[data-key="seed"] td').nth(1)).to_have_text("3")
        expect(dialects.locator('tr[data-key="v2"] td').nth(1)).to_have_text("1")
        events = page.locator("#events tbody")
        expect(events.locator(f'tr[data-key="event_{first}"] td').nth(1)).to_have_text("2")
        expect(events.locator(f'tr[data-key="event_{second}"] td').nth(1)).to_have_text("1")
        expect(events.locator('tr[data-key="firehose"] td').nth(1)).to_have_text("1")
        expect(page.locator('#refusals tr[data-key="not_json"] td').nth(1)).to_have_text("1")
        expect(page.locator('#addresses tr[data-key="127.0.0.1"] td').nth(1)).to_have_text("4")

        # Votes flow, in a wave over about eight seconds (a few of the page's
        # two-second samples): both charts rise above zero.
        for user in range(1, 61):
            party.vote(first, track, up=user % 3 != 0, user_id=user)
            time.sleep(0.02 + 0.2 * (1 + math.sin(user / 6)) / 2)
        for chart in ("#votes-chart", "#frames-chart"):
            wait_for(lambda chart=chart: float(
                page.locator(chart).get_attribute("data-peak") or 0) > 0,
                20, f"{chart} to show votes")
        expect(page.locator("#votes-chart .line")).not_to_have_attribute("points", "")
        screenshot(page, "status")
    assert screen.problems == []
    # The admin port's root is the same page; the public port has none.
    with urllib.request.urlopen(daemon.admin_url + "/", timeout=5) as root:
        assert b"<title>partysense-live status</title>" in root.read()
    with pytest.raises(urllib.error.HTTPError) as public:
        urllib.request.urlopen(daemon.url + "/status", timeout=5)
    assert public.value.code == 404


@pytest.mark.browser
def test_the_status_page_says_why_the_database_is_away(db_dsn: str, tmp_path: Path,
                                                       screen: Screen) -> None:
    missing = make_dsn(db_dsn, dbname="partysense_no_such_database")
    daemon = Daemon(missing, tmp_path, "--no-demo").start(wait=False)
    try:
        screen.page.goto(f"{daemon.admin_url}/status")
        page = screen.page
        expect(page.locator("#updated")).to_have_attribute("data-state", "ok",
                                                           timeout=15 * SECONDS)
        for badge in ("#listener-state", "#queries-state"):
            expect(page.locator(badge)).not_to_have_attribute("data-state", "connected")
        expect(page.locator("#db-reason")).to_contain_text("does not exist",
                                                            timeout=20 * SECONDS)
        expect(page.locator("#queue-usage")).to_have_text("unknown")
        screenshot(page, "status-database-away")
    finally:
        daemon.stop()
    assert screen.problems == []
