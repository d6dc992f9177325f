"""The party's pulse on the live page, and the projector view, in a real headless Chromium.

Screenshots (artifacts/screenshots/): ``pulse-*`` is the page with half an
hour of a party behind it, ``screen-*`` the projector view
(``/?event=N&view=screen``), each at 1920x1080 and on a 360x740 phone.
"""

from __future__ import annotations

import math

import pytest
from playwright.sync_api import expect

from harness.daemon import Daemon, wait_for
from tests.browser import FULL_HD, PHONE, SECONDS, Screen, screenshot
from tests.support import Party

pytestmark = pytest.mark.browser

NAMES = [("One More Time", "Daft Punk"), ("Blue Monday", "New Order"),
         ("Around the World", "Daft Punk"), ("Smalltown Boy", "Bronski Beat"),
         ("Groove Is in the Heart", "Deee-Lite"), ("Finally", "CeCe Peniston"),
         ("Music Sounds Better with You", "Stardust"), ("Show Me Love", "Robin S"),
         ("Rhythm Is a Dancer", "Snap!"), ("Sandstorm", "Darude"),
         ("Blue (Da Ba Dee)", "Eiffel 65"), ("Freed from Desire", "Gala")]


def half_an_hour_of_party(party: Party, event_id: int) -> list[int]:
    """Twelve tracks and their votes, spread over the last 28 minutes as a
    party builds up (the change log's commit times moved back, in seq order)."""
    tracks = [party.track(name, artist) for name, artist in NAMES]
    user = 0
    for index, track in enumerate(tracks):
        for vote in range(14 - index):
            user += 1
            party.vote(event_id, track, up=vote % 4 != 3, user_id=user)
    seqs = [seq for (seq,) in party.query(
        "SELECT seq FROM partysense_change WHERE event_id = %s ORDER BY seq", (event_id,))]
    # Sparse at first, busier lately, with a wave: minutes back from now.
    for position, seq in enumerate(seqs):
        share = position / len(seqs)
        back = 28 * (1 - math.sqrt(share)) + 0.8 * math.sin(share * 19)
        party.query("UPDATE partysense_change SET committed_at = now() - %s * interval '1 minute'"
                    " WHERE seq = %s", (max(0.0, back), seq))
    return tracks


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


def test_the_projector_shows_the_top_10_and_animates_rank_changes(
        daemon: Daemon, party: Party, screen: Screen) -> None:
    event_id = party.event('Friday "Fever" 🎉')
    tracks = half_an_hour_of_party(party, event_id)
    screen.page.goto(f"{daemon.url}/?event={event_id}&view=screen")
    screen.expect_state("live")
    rows = screen.page.locator("#ranking li")
    expect(rows).to_have_count(10)
    expect(rows.first.locator(".name")).to_have_text(NAMES[0][0])
    # No controls: no picker, no feed, no event list; the pulse below the ranking.
    for hidden in ("#picker", "#feed-heading", "#event-list"):
        expect(screen.page.locator(hidden)).to_be_hidden()
    expect(screen.page.locator("#pulse")).to_have_attribute("data-loaded", "true")
    ranking_box = screen.page.locator("#ranking").bounding_box()
    pulse_box = screen.page.locator("#pulse-chart").bounding_box()
    assert ranking_box is not None and pulse_box is not None
    assert pulse_box["y"] >= ranking_box["y"] + ranking_box["height"]
    # Large type: a track's name at least 36 px tall on a 1080p projector.
    size = screen.page.evaluate(
        "() => parseFloat(getComputedStyle(document.querySelector('#ranking .name')).fontSize)")
    assert size >= 36
    # Everything fits the screen: the top 10 and the pulse, no scrolling.
    assert screen.page.evaluate("document.documentElement.scrollHeight") <= FULL_HD["height"]

    # The fifth track climbs to the top: its row slides there.
    climber = tracks[4]
    for user in range(2000, 2012):
        party.vote(event_id, climber, user_id=user)
    expect(rows.first).to_have_attribute("data-tid", str(climber))
    assert int(screen.page.locator("#ranking").get_attribute("data-moves") or 0) > 0
    wait_for(lambda: shows_the_top_ten(screen, party, event_id), 15, "the top 10, exact")
    saved = screenshot(screen.page, "screen")
    assert all(path.stat().st_size > 10_000 for path in saved)
    screen.page.set_viewport_size(PHONE)
    assert screen.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert screen.problems == []


def shows_the_top_ten(screen: Screen, party: Party, event_id: int) -> bool:
    """The page shows ten tracks with SQL's tallies, and none left out has more net votes."""
    tallies = party.tallies(event_id)
    shown = {int(tid): tuple(counts) for tid, counts in screen.shown_tallies().items()}
    net = {tid: up - down for tid, (up, down) in tallies.items()}
    left_out = [net[tid] for tid in tallies if tid not in shown]
    return (len(shown) == 10 and all(tallies.get(tid) == counts for tid, counts in shown.items())
            and min(net[tid] for tid in shown) >= max(left_out, default=-10**9))


def test_a_phone_can_open_the_projector_view(
        daemon: Daemon, party: Party, screen: Screen) -> None:
    event_id = party.event("Small")
    party.vote(event_id, party.track("Only"), user_id=1)
    screen.page.set_viewport_size(PHONE)
    screen.page.goto(f"{daemon.url}/?event={event_id}&view=screen")
    screen.expect_state("live", timeout=15 * SECONDS)
    expect(screen.page.locator("#ranking li")).to_have_count(1)
    assert screen.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert screen.problems == []
