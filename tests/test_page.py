"""The live page in a real headless Chromium, against the real daemon and PostgreSQL.

The page speaks partysense.v2: it opens with the event's snapshot, applies
each change, and after a reconnect resumes from the highest seq it applied.
Every wait below is a condition with a deadline (Playwright's ``expect`` or
``harness.daemon.wait_for``); screenshots land in artifacts/screenshots/.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from harness.daemon import Daemon, wait_for
from tests.browser import SECONDS, Screen, screenshot
from tests.support import Party
from tests.test_dbcli import refused_port

HOSTILE_TRACK = '<script>alert(1)</script> "quotes" 🎉'
HOSTILE_ARTIST = '<img src=x onerror="window.__pwned = true">'
HOSTILE_TITLE = '<b onmouseover="window.__pwned = true">Fever</b> "night" 🎉'

@pytest.mark.browser
def test_page_opens_with_the_snapshot_and_moves_with_each_vote(
        daemon: Daemon, party: Party, screen: Screen) -> None:
    event_id = party.event("Friday")
    hit = party.track("One More Time", "Daft Punk")
    other = party.track("Blue Monday", "New Order")
    for user in range(3):
        party.vote(event_id, hit, up=True, user_id=user)
    party.vote(event_id, other, up=True, user_id=1)
    party.vote(event_id, other, up=False, user_id=2)

    screen.open(daemon, event_id)
    screen.expect_state("live")
    # The snapshot, not an empty screen: the votes cast before the page opened.
    screen.expect_tallies(party.tallies(event_id))
    expect(screen.page.locator("#title")).to_have_text("Friday")
    ranking = screen.page.locator("#ranking li")
    expect(ranking.first.locator(".name")).to_have_text("One More Time")
    expect(screen.row(other).locator(".down")).to_have_text("▼ 1")

    for user in range(10, 14):
        party.vote(event_id, other, up=True, user_id=user)
    party.vote(event_id, hit, up=False, user_id=20)
    screen.expect_tallies(party.tallies(event_id))
    expect(screen.row(other).locator(".up")).to_have_text("▲ 5")
    expect(screen.row(other).locator(".net")).to_have_text("+4")
    expect(ranking.first.locator(".name")).to_have_text("Blue Monday")
    # Five votes cast while watching; Django's insert-then-update of the down
    # vote shows as the one vote the guest cast.
    expect(screen.feed).to_have_count(5)
    expect(screen.feed.first.locator(".action")).to_have_text("voted down")
    expect(screen.feed.first.locator(".name")).to_have_text("One More Time")
    assert screen.problems == []


@pytest.mark.browser
def test_hostile_names_show_as_text(daemon: Daemon, party: Party, screen: Screen) -> None:
    event_id = party.event(HOSTILE_TITLE)
    before = party.track(HOSTILE_TRACK, HOSTILE_ARTIST)
    party.vote(event_id, before)

    screen.open(daemon, event_id)
    screen.expect_state("live")
    after = party.track(HOSTILE_TRACK + " remix", HOSTILE_ARTIST)
    party.vote(event_id, after, up=False)
    screen.expect_tallies(party.tallies(event_id))

    expect(screen.page.locator("#title")).to_have_text(HOSTILE_TITLE)  # from the snapshot
    expect(screen.row(before).locator(".name")).to_have_text(HOSTILE_TRACK)
    expect(screen.row(before).locator(".artist")).to_have_text(HOSTILE_ARTIST)
    expect(screen.row(after).locator(".name")).to_have_text(HOSTILE_TRACK + " remix")
    expect(screen.feed.first.locator(".name")).to_have_text(HOSTILE_TRACK + " remix")
    expect(screen.feed.first.locator(".artist")).to_have_text(HOSTILE_ARTIST)
    # No markup was made of the names, and nothing in them ran.
    expect(screen.page.locator("main script, main img, main b, header b")).to_have_count(0)
    screen.page.locator("#title").hover()
    assert screen.page.evaluate("window.__pwned") is None
    assert screen.problems == []


@pytest.mark.browser
def test_page_recovers_by_itself_after_the_daemon_restarts(
        daemon: Daemon, party: Party, screen: Screen) -> None:
    event_id = party.event("Marathon")
    first, second, third = (party.track(f"Track {n}") for n in (1, 2, 3))
    flipped = party.vote(event_id, first, up=True, user_id=1)
    withdrawn = party.vote(event_id, second, up=False, user_id=2)
    party.vote(event_id, second, up=True, user_id=3)

    screen.open(daemon, event_id)
    screen.expect_state("live")
    screen.expect_tallies(party.tallies(event_id))
    port = daemon.port

    daemon.stop()
    screen.expect_state("reconnecting")
    # While the daemon is down: a new vote (insert + update), a changed vote,
    # a withdrawn vote, a vote on a track the page has not seen.
    party.vote(event_id, first, up=False, user_id=4)
    party.query("UPDATE event_vote SET is_positive = false WHERE id = %s", (flipped,))
    party.query("DELETE FROM event_vote WHERE id = %s", (withdrawn,))
    party.vote(event_id, third, up=True, user_id=5)
    screenshot(screen.page, "reconnecting")

    daemon.start()
    assert daemon.port == port
    screen.expect_state("live", timeout=30 * SECONDS)
    screen.expect_tallies(party.tallies(event_id))
    # Resumed from its cursor, not reloaded: what happened during the outage
    # is in the feed, once each.
    expect(screen.feed).to_have_count(4)
    actions = sorted(screen.feed.locator(".action").all_inner_texts())
    assert actions == ["changed to down", "voted down", "voted up", "withdrew a down vote"]

    party.vote(event_id, third, up=False, user_id=6)
    screen.expect_tallies(party.tallies(event_id))
    assert screen.problems == []


@pytest.mark.browser
def test_offline_shows_offline_and_catches_up(
        daemon: Daemon, party: Party, screen: Screen) -> None:
    event_id = party.event("Flaky Wi-Fi")
    track = party.track("Song")
    party.vote(event_id, track, user_id=1)
    screen.open(daemon, event_id)
    screen.expect_state("live")

    screen.context.set_offline(True)
    screen.expect_state("offline")
    expect(screen.status).to_contain_text("offline")
    party.vote(event_id, track, up=False, user_id=2)

    screen.context.set_offline(False)
    screen.expect_state("live")
    screen.expect_tallies(party.tallies(event_id))
    expect(screen.feed.first.locator(".action")).to_have_text("voted down")
    assert screen.problems == []


@pytest.mark.browser
def test_screenshots_of_a_busy_party(daemon: Daemon, party: Party, screen: Screen) -> None:
    event_id = party.event('Friday "Fever" 🎉')
    names = [("One More Time", "Daft Punk"), ("Blue Monday", "New Order"),
             ("Around the World", "Daft Punk"), (HOSTILE_TRACK, HOSTILE_ARTIST),
             ("A track with a name long enough to need more than one phone line", "Somebody"),
             ("Smalltown Boy", "Bronski Beat")]
    tracks = [party.track(name, artist) for name, artist in names]
    user = 0
    for index, track in enumerate(tracks):
        for _ in range(6 - index):
            user += 1
            party.vote(event_id, track, up=True, user_id=user)
        for _ in range(index % 3):
            user += 1
            party.vote(event_id, track, up=False, user_id=user)

    screen.open(daemon, event_id)
    screen.expect_state("live")
    for index, track in enumerate(reversed(tracks)):
        user += 1
        party.vote(event_id, track, up=index % 3 != 1, user_id=user)
    screen.expect_tallies(party.tallies(event_id))
    expect(screen.feed).to_have_count(len(tracks))

    saved = screenshot(screen.page, "party")
    assert all(path.stat().st_size > 10_000 for path in saved)
    # Nothing wider than a 360-pixel phone: no sideways scrolling.
    screen.page.set_viewport_size({"width": 360, "height": 740})
    assert screen.page.evaluate("document.documentElement.scrollWidth") <= 360
    assert screen.problems == []


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.browser
def test_every_event_then_pick_one_from_the_list(
        daemon: Daemon, party: Party, screen: Screen) -> None:
    quiet = party.event("Quiet night")
    busy = party.event(HOSTILE_TITLE)
    track = party.track("Song")
    party.vote(busy, track, up=False, user_id=1)
    assert get_json(daemon.url + "/api/events") == (
        200, [{"id": busy, "title": HOSTILE_TITLE}, {"id": quiet, "title": "Quiet night"}])

    screen.open(daemon, "ALL")
    screen.expect_state("live")
    expect(screen.page.locator("#title")).to_have_text("All events")
    party.vote(quiet, track, user_id=2)
    expect(screen.feed.first.locator(".event")).to_have_text("Quiet night")
    expect(screen.page.locator("#event-list button")).to_have_count(2)
    screenshot(screen.page, "every-event")

    # Switching on the open connection: unsubscribe the firehose, snapshot of one event.
    screen.page.locator(f'#event-list button[data-event="{busy}"]').click()
    expect(screen.page.locator("#title")).to_have_text(HOSTILE_TITLE)
    screen.expect_state("live")
    screen.expect_tallies(party.tallies(busy))
    expect(screen.feed).to_have_count(0)
    party.vote(quiet, track, user_id=3)  # the other event: not on this screen
    party.vote(busy, track, user_id=4)
    screen.expect_tallies(party.tallies(busy))
    expect(screen.feed).to_have_count(1)
    assert screen.page.url.endswith(f"?event={busy}")
    assert screen.problems == []


@pytest.mark.browser
def test_every_event_opens_with_the_latest_votes(
        daemon: Daemon, party: Party, screen: Screen) -> None:
    """The firehose has no snapshot; the page replays the last changes instead of a blank feed."""
    event_id = party.event("Earlier")
    track = party.track("Before the page")
    for user_id, up in ((1, True), (2, False), (3, True)):
        party.vote(event_id, track, up=up, user_id=user_id)
    screen.open(daemon, "ALL")
    screen.expect_state("live")
    # Four changes (the down vote is Django's insert then update), three votes.
    expect(screen.feed).to_have_count(3)
    assert screen.feed.locator(".action").all_inner_texts() == [
        "voted up", "voted down", "voted up"]
    expect(screen.page.locator("#notice")).to_be_hidden()
    party.vote(event_id, track, up=False, user_id=4)
    expect(screen.feed).to_have_count(4)
    expect(screen.feed.first.locator(".action")).to_have_text("voted down")
    assert screen.problems == []


@pytest.mark.daemon
def test_event_list_is_503_json_while_the_database_is_unreachable(tmp_path: Path) -> None:
    with refused_port() as port:  # held, so that nobody else listens there meanwhile
        daemon = Daemon(f"postgresql://nobody@127.0.0.1:{port}/nothing", tmp_path)
        daemon.start(wait=False)
        try:
            wait_for(daemon.health, 30, "the daemon's HTTP port")
            code, body = get_json(daemon.url + "/api/events")
            assert code == 503 and body["error"] == "unavailable"
            assert "Traceback" not in daemon.log()
        finally:
            daemon.stop()


@pytest.mark.browser
def test_a_private_party_page_takes_its_token_from_the_fragment(
        db_dsn: str, tmp_path: Path, party: Party, screen: Screen) -> None:
    import time

    import jwt

    secret = b"k" * 40  # made here, for this test only
    (tmp_path / "token.secret").write_bytes(secret)
    event_id, track_id = party.event("Private"), party.track("Hush", "Quiet")
    party.vote(event_id, track_id)
    token = jwt.encode({"events": [event_id], "exp": int(time.time()) + 600}, secret,
                       algorithm="HS256")
    with Daemon(db_dsn, tmp_path, "--token-secret-file", str(tmp_path / "token.secret")) \
            as daemon:
        # Without the token the daemon refuses, and the page says why.
        screen.open(daemon, event_id)
        expect(screen.page.locator("#notice")).to_contain_text("token", timeout=15 * SECONDS)
        # With it, in the fragment (never sent to the server): the tallies, then a vote.
        screen.page.goto(f"{daemon.url}/?event={event_id}#token={token}")
        screen.page.reload()  # a new fragment alone is no new page load
        screen.expect_state("live")
        screen.expect_tallies(party.tallies(event_id))
        party.vote(event_id, track_id, up=False, user_id=2)
        screen.expect_tallies(party.tallies(event_id))
        assert token not in daemon.log()
    assert screen.problems == []
