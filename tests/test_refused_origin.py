"""A browser page whose Origin --allowed-origins refuses learns why, in Chromium.

The daemon opens the socket only to close it with 4403 and
``origin_not_allowed`` (a failed handshake tells a page's script nothing);
/client.js reports status ``refused`` and makes no further attempt, and the
live page shows it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from harness.daemon import Daemon, wait_for
from tests.browser import SECONDS, Screen
from tests.support import Party
from tests.test_client_js import CONNECT, embedding_page, serving
from tests.test_fuzz import refused

pytestmark = pytest.mark.browser

ALLOWED = "https://party.example"

# Counts the sockets the page opens: the client uses the global WebSocket.
COUNT_SOCKETS = """() => {
    window.attempts = 0;
    const Real = window.WebSocket;
    window.WebSocket = class extends Real {
        constructor(...args) { super(...args); window.attempts += 1; }
    };
}"""

# Long enough for several retries of the client's backoff (0.5 s, 1 s, 2 s, ...).
QUIET_SECONDS = 6


@pytest.fixture
def refusing(db_dsn: str, tmp_path: Path) -> Iterator[Daemon]:
    """A daemon that lets only pages of https://party.example connect."""
    with Daemon(db_dsn, tmp_path, "--allowed-origins", ALLOWED) as daemon:
        yield daemon


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


def origin_refusals(daemon: Daemon) -> float:
    return refused(daemon).get("origin_not_allowed", 0)


def test_a_page_of_a_refused_origin_is_told_why_and_stops_trying(
        refusing: Daemon, party: Party, page: Any) -> None:
    event_id = party.event("Private")
    with serving(embedding_page(refusing)) as url:
        page.goto(url)
        page.wait_for_function("() => window.partysense !== undefined", timeout=15 * SECONDS)
        page.evaluate(COUNT_SOCKETS)
        page.evaluate(CONNECT, {"event": event_id})
        page.wait_for_function("() => window.live.status.state === 'refused'",
                               timeout=15 * SECONDS)
        status = page.evaluate("() => window.live.status")
        assert status["reason"] == "origin_not_allowed"
        assert status["text"] == "this page may not connect to the live server"
        assert page.evaluate("() => window.record.errors") == ["origin_not_allowed"]
        wait_for(lambda: origin_refusals(refusing) == 1, 10, "the refusal to be counted")
        # Nothing brings it back: not time, not the network, not showing the tab.
        page.evaluate("() => { window.dispatchEvent(new Event('online'));"
                      " document.dispatchEvent(new Event('visibilitychange')); }")
        time.sleep(QUIET_SECONDS)  # a negative: nothing to wait on but time
        assert page.evaluate("() => window.attempts") == 1
        assert origin_refusals(refusing) == 1
        assert page.evaluate("() => window.live.status.state") == "refused"


def test_the_live_page_shows_it_is_refused(refusing: Daemon, party: Party,
                                           screen: Screen) -> None:
    """The daemon's own page, when its origin is not among --allowed-origins
    (http://127.0.0.1:PORT is not https://party.example)."""
    event_id = party.event("Private")
    screen.open(refusing, event_id)
    screen.expect_state("refused")
    expect(screen.page.locator("#status-text")).to_have_text(
        "this page may not connect to the live server")
    notice = screen.page.locator("#notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("origin_not_allowed")
    assert screen.problems == []
