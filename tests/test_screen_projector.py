"""The projector view (``/?event=N&view=screen``), and how many are here,
in a real headless Chromium.

Screenshots (artifacts/screenshots/): ``screen-*`` is the projector view
with half an hour of a party behind it, each at 1920x1080 and on a 360x740
phone; ``screen-long-title-*`` with a long remix title. Rows re-ranking under
a vote storm are in tests/test_screen_reranking.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from tests.browser import FULL_HD, PHONE, SECONDS, Screen, screenshot
from tests.screen_support import NAMES, half_an_hour_of_party, shows_the_top_ten
from tests.support import Party

pytestmark = pytest.mark.browser


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



LONG_TITLE = ("Around the World (Extended Club Remix by the Midnight Warehouse Collective "
              "featuring the Sunrise Choir, Radio Edit)")
LONG_ARTIST = "The Extraordinarily Long-Named Orchestra of the Northern Lights and Friends"

# A row's parts, measured: {part: [left, top, right, bottom]}, with how far
# the name and the artist are cut, and what is drawn at the artist's middle.
ROW_PARTS = """(li) => {
    const edges = (element) => {
        const r = element.getBoundingClientRect();
        return [r.left, r.top, r.right, r.bottom];
    };
    const name = li.querySelector(".name"), artist = li.querySelector(".artist");
    const [left, top, right, bottom] = edges(artist);
    const middle = document.elementFromPoint((left + right) / 2, (top + bottom) / 2);
    return {row: edges(li), name: edges(name), artist: edges(artist),
            counts: edges(li.querySelector(".counts")), what: edges(li.querySelector(".what")),
            nameCut: name.scrollWidth > name.clientWidth,
            nameEllipsis: getComputedStyle(name).textOverflow === "ellipsis",
            artistCut: artist.scrollWidth > artist.clientWidth,
            artistOnTop: middle === artist};
}"""


def test_a_long_remix_title_leaves_its_artist_in_view(
        daemon: Daemon, party: Party, screen: Screen) -> None:
    event_id = party.event("Remixes")
    remix = party.track(LONG_TITLE, "Daft Punk")
    both_long = party.track(LONG_TITLE + " (Dub)", LONG_ARTIST)
    short = party.track("Sandstorm", "Darude")
    for user, track in enumerate([remix, remix, remix, both_long, both_long, short]):
        party.vote(event_id, track, user_id=user)
    screen.page.goto(f"{daemon.url}/?event={event_id}&view=screen")
    screen.expect_state("live")
    expect(screen.page.locator("#ranking li")).to_have_count(3)
    expect(screen.row(remix).locator(".artist")).to_have_text("Daft Punk")

    for track in (remix, both_long):
        parts = screen.row(track).evaluate(ROW_PARTS)
        row, name, artist = parts["row"], parts["name"], parts["artist"]
        # The artist is there, whole or cut, inside its row, beside the name, before the counts.
        assert artist[2] - artist[0] >= 60 and artist[3] - artist[1] > 10, parts
        assert row[0] <= artist[0] and artist[2] <= row[2], parts
        assert row[1] <= artist[1] and artist[3] <= row[3], parts
        assert name[2] <= artist[0] and artist[2] <= parts["counts"][0], parts
        assert parts["artistOnTop"], parts
        # The title gives way: cut, with an ellipsis.
        assert parts["nameCut"] and parts["nameEllipsis"], parts
    assert not screen.row(remix).evaluate(ROW_PARTS)["artistCut"]  # "Daft Punk", whole
    # A long artist is cut too, but keeps a fair share of the line.
    parts = screen.row(both_long).evaluate(ROW_PARTS)
    assert parts["artistCut"]
    assert parts["artist"][2] - parts["artist"][0] >= 0.3 * (parts["what"][2] - parts["what"][0])
    saved = screenshot(screen.page, "screen-long-title")
    assert all(path.stat().st_size > 10_000 for path in saved)
    assert screen.problems == []


# -- "N here" ---------------------------------------------------------------------


def test_the_page_and_the_projector_show_how_many_are_here(
        db_dsn: str, tmp_path: Path, party: Party, screen: Screen) -> None:
    event_id = party.event("Crowded")
    party.vote(event_id, party.track("Only"), user_id=1)
    with Daemon(db_dsn, tmp_path, "--presence-interval", "1") as daemon:
        screen.page.goto(f"{daemon.url}/?event={event_id}")
        screen.expect_state("live")
        here = screen.page.locator("#here")
        expect(here).to_have_text("1 here")  # itself, right after the tallies
        # Another watcher (a script, no presence asked): counted all the same.
        with connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as other:
            other.send(json.dumps({"type": "subscribe", "event": event_id}))
            assert json.loads(other.recv(timeout=10))["type"] == "snapshot"
            expect(here).to_have_text("2 here", timeout=15 * SECONDS)
            projector = screen.page.context.new_page()
            projector.goto(f"{daemon.url}/?event={event_id}&view=screen")
            expect(projector.locator("#here")).to_have_text("3 here", timeout=15 * SECONDS)
            expect(here).to_have_text("3 here", timeout=15 * SECONDS)
            assert projector.locator("#here").is_visible()
            projector.close()
        expect(here).to_have_text("1 here", timeout=15 * SECONDS)
        # Every event at once watches no one event: no count.
        screen.page.goto(f"{daemon.url}/?event=ALL")
        screen.expect_state("live")
        expect(here).to_be_hidden()
    assert screen.problems == []
