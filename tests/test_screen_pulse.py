"""The party's pulse on the live page, in a real headless Chromium.

Screenshots (artifacts/screenshots/): ``pulse-*`` is the page with half an
hour of a party behind it, at 1920x1080 and on a 360x740 phone.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from harness.daemon import Daemon, wait_for
from tests.browser import Screen, screenshot
from tests.screen_support import half_an_hour_of_party
from tests.support import Party

pytestmark = pytest.mark.browser


def cast_in_last_30_minutes(party: Party, event_id: int) -> int:
    return int(party.query(
        "SELECT count(*) FROM partysense_change WHERE event_id = %s AND op = 'insert' "
        "AND committed_at >= date_trunc('minute', now()) - interval '29 minutes'",
        (event_id,))[0][0])


def shown_pulse(screen: Screen) -> int:
    return int(screen.page.locator("#pulse").get_attribute("data-total") or -1)


def test_the_pulse_shows_votes_per_minute_and_moves_with_each_vote(
        daemon: Daemon, party: Party, screen: Screen) -> None:
    event_id = party.event("Friday")
    tracks = half_an_hour_of_party(party, event_id)
    screen.open(daemon, event_id)
    screen.expect_state("live")
    expect(screen.page.locator("#pulse")).to_have_attribute("data-loaded", "true")
    assert shown_pulse(screen) == cast_in_last_30_minutes(party, event_id)
    bars = screen.page.locator("#pulse-chart rect")
    expect(bars).to_have_count(30)
    now_bar = screen.page.locator("#pulse-chart rect.now")
    before = int(now_bar.get_attribute("data-votes") or -1)

    # Live: a vote cast is one more, in the current minute; a withdrawn vote
    # and a changed one are no vote cast.
    party.vote(event_id, tracks[5], up=False, user_id=900)
    withdrawn = party.vote(event_id, tracks[6], user_id=901)
    party.query("DELETE FROM event_vote WHERE id = %s", (withdrawn,))
    screen.expect_tallies(party.tallies(event_id))
    wanted = cast_in_last_30_minutes(party, event_id)
    wait_for(lambda: shown_pulse(screen) == wanted, 15, "the pulse to count the new votes")
    assert int(now_bar.get_attribute("data-votes") or -1) in (before + 2, 2)  # a new minute?
    saved = screenshot(screen.page, "pulse")
    assert all(path.stat().st_size > 10_000 for path in saved)
    assert screen.problems == []
