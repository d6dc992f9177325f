"""A Django page with ``{% live_board %}``, in Chromium, against the real daemon.

pytest-django's ``live_server`` serves the test project from a thread; the
daemon (``--token-secret-file`` with the settings' secret) listens to the
same test database. Tokens live 3 seconds: the board must fetch fresh ones
from the app's token view and hand them to the daemon on the same socket,
while votes flow, and end on SQL's tallies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.signals import request_started
from django.test import Client
from playwright.sync_api import expect

from harness.daemon import Daemon, wait_for
from harness.faults import Voter
from partysense.djangoapp.conf import live_settings
from tests.browser import as_sql_says, chromium
from tests.djangoproject.views import PRIVATE_EVENT
from tests.support import Party

pytestmark = pytest.mark.browser

# Before any page script: count the WebSockets the page opens, and record
# every state the board goes through.
WATCH = """
window.__sockets = 0;
window.__states = [];
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) { super(...args); window.__sockets += 1; }
};
new MutationObserver((records) => {
  for (const record of records) {
    if (record.target.matches && record.target.matches("section.partysense-live")) {
      window.__states.push(record.target.dataset.state);
    }
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-state"]});
"""

SHOWN_TALLIES = """() => Object.fromEntries(
    Array.from(document.querySelectorAll("section.partysense-live li[data-tid]"),
               (li) => [li.dataset.tid, [Number(li.dataset.up), Number(li.dataset.down)]]))"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, as tests/conftest.py's. Playwright's sync API runs an asyncio
    loop in this thread, and while it runs Django refuses ORM calls here
    (pytest-django's flush after each test) unless told they are safe: they
    are, the loop is Playwright's. (The tests themselves leave the ORM to
    fixtures: Django keeps a connection per context while a loop runs, and one
    opened in a test's own context would outlive it.)"""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with chromium() as value:
            yield value


@pytest.fixture
def guest_session(transactional_db: None) -> str:
    """The session cookie of a logged-in guest."""
    client = Client()
    client.force_login(User.objects.create_user("guest"))
    return str(client.cookies["sessionid"].value)


@pytest.fixture
def daemon(django_dsn: str, tmp_path: Path, settings: Any) -> Iterator[Daemon]:
    secret = live_settings().secret
    assert secret is not None
    (tmp_path / "token.secret").write_bytes(secret)
    with Daemon(django_dsn, tmp_path, "--token-secret-file",
                str(tmp_path / "token.secret")) as value:
        settings.PARTYSENSE_LIVE = {**settings.PARTYSENSE_LIVE, "URL": value.url,
                                    "TOKEN_TTL": 3}
        yield value


@pytest.fixture
def token_requests() -> Iterator[list[str]]:
    """The paths of the token view's requests, as the live server receives them."""
    seen: list[str] = []

    def started(sender: Any, environ: dict[str, Any], **kwargs: Any) -> None:
        if environ.get("PATH_INFO", "").endswith("/token"):
            seen.append(environ["PATH_INFO"])

    request_started.connect(started, weak=False)
    try:
        yield seen
    finally:
        request_started.disconnect(started)


def new_page(browser: Any, live_server: Any, session: str | None) -> tuple[Any, Any, list[str]]:
    context = browser.new_context()
    if session is not None:
        context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
    context.add_init_script(WATCH)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" else None)
    return context, page, problems


def test_the_board_keeps_sql_tallies_across_token_expiries_on_one_socket(
        live_server: Any, daemon: Daemon, django_dsn: str, browser: Any,
        token_requests: list[str], guest_session: str) -> None:
    with Party(django_dsn) as party:
        event_id = party.event("Django night")
        first, second = party.track("One \"quoted\" <b>"), party.track("Two", "Other")
        party.vote(event_id, first, user_id=1)
        party.vote(event_id, second, up=False, user_id=2)

        context, page, problems = new_page(browser, live_server, guest_session)
        try:
            page.goto(f"{live_server.url}/events/{event_id}/")
            board = page.locator(f'section.partysense-live[data-event="{event_id}"]')
            expect(board).to_have_attribute("data-state", "live", timeout=30_000)
            expect(page.locator(f'section[data-event="{PRIVATE_EVENT}"]')).to_have_attribute(
                "data-state", "forbidden")

            def shown() -> dict[str, list[int]]:
                return dict(page.evaluate(SHOWN_TALLIES))

            wait_for(lambda: shown() == as_sql_says(party.tallies(event_id)), 15,
                     "the board's first tallies")
            # Names are text: the track's markup is shown, not obeyed.
            expect(board.locator("li b")).to_have_count(0)
            expect(board).to_contain_text('One "quoted" <b>')

            voters = [Voter(django_dsn, event_id, first, interval=0.05),
                      Voter(django_dsn, event_id, second, interval=0.08)]
            try:
                # Tokens of 3 s: two fresh ones mean the daemon took the first
                # (it times the expiry of the token it holds).
                wait_for(lambda: len(token_requests) >= 2, 40, "two fresh tokens")
                wait_for(lambda: all(v.votes >= 5 for v in voters), 15, "votes to flow")
            finally:
                for voter in voters:
                    voter.stop()
            wanted = as_sql_says(party.tallies(event_id))
            try:
                wait_for(lambda: shown() == wanted, 30, "the board's tallies to be SQL's")
            except AssertionError:
                raise AssertionError(f"the board shows {shown()}, SQL says {wanted}") from None

            assert page.evaluate("() => window.__sockets") == 1
            states = page.evaluate("() => window.__states")
            assert "live" in states
            assert not {"reconnecting", "unauthorized", "refused"} & set(states), states
            assert token_requests == [f"/live/events/{event_id}/token"] * len(token_requests)
            assert problems == []
        finally:
            context.close()


def test_an_anonymous_guest_is_told_to_log_in_and_opens_no_socket(
        live_server: Any, daemon: Daemon, django_dsn: str, browser: Any,
        token_requests: list[str]) -> None:
    with Party(django_dsn) as party:
        event_id = party.event("Members only")
    context, page, problems = new_page(browser, live_server, None)
    try:
        page.goto(f"{live_server.url}/events/{event_id}/")
        expect(page.locator("section.partysense-live")).to_have_count(2)
        for board in page.locator("section.partysense-live").all():
            expect(board).to_have_attribute("data-state", "unauthorized")
            expect(board).to_contain_text("log in")
        # The page loaded without a board script: nothing connects.
        page.wait_for_load_state("load")
        assert page.evaluate("() => window.__sockets") == 0
        assert token_requests == [] and problems == []
    finally:
        context.close()
