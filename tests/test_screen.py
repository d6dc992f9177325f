"""The party's pulse on the live page, and the projector view, in a real headless Chromium.

Screenshots (artifacts/screenshots/): ``pulse-*`` is the page with half an
hour of a party behind it, ``screen-*`` the projector view
(``/?event=N&view=screen``), each at 1920x1080 and on a 360x740 phone;
``screen-long-title-*`` with a long remix title, and ``screen-moving-1080p``
one frame, held, of a track climbing from 10th to the top.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from tests.browser import FULL_HD, PHONE, SCREENSHOTS, SECONDS, Screen, screenshot
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


# -- rows re-ranking under a vote storm -------------------------------------------
#
# What a projector shows of the rows' text, every 100 ms: each row's text boxes
# (.rank, .name, .artist, the counts, .net: the glyphs' own boxes, cut to their
# element where it clips them), less what is painted over them by another row
# with an opaque background stacked above (CSS 2.1 appendix E, for the sibling
# rows of one list: positioned rows by z-index then document order, above the
# rows that are not). Two rows' visible text may not share more than ~1 px.

ROW_TEXT = """() => {
    const PARTS = ".rank, .name, .artist, .up, .down, .net";
    const SLACK = 1;  // px: anti-aliasing and rounding
    const alpha = (color) => {
        const slash = color.match(/\\/\\s*([0-9.]+)(%?)\\s*\\)$/);
        if (slash) return Number(slash[1]) / (slash[2] ? 100 : 1);
        const rgba = color.match(/^rgba\\([^,]+,[^,]+,[^,]+,\\s*([0-9.]+)\\)$/);
        return rgba ? Number(rgba[1]) : color === "transparent" ? 0 : 1;
    };
    const box = (r) => ({left: r.left, top: r.top, right: r.right, bottom: r.bottom});
    const meet = (a, b) => ({left: Math.max(a.left, b.left), top: Math.max(a.top, b.top),
                             right: Math.min(a.right, b.right),
                             bottom: Math.min(a.bottom, b.bottom)});
    const solid = (r, slack = 0) => r.right - r.left > slack && r.bottom - r.top > slack;
    const minus = (r, hole) => {  // r less hole: up to four rectangles
        const cut = meet(r, hole);
        if (!solid(cut)) return [r];
        return [{...r, bottom: cut.top}, {...r, top: cut.bottom},
                {left: r.left, right: cut.left, top: cut.top, bottom: cut.bottom},
                {left: cut.right, right: r.right, top: cut.top, bottom: cut.bottom}]
            .filter((piece) => solid(piece));
    };
    const rows = Array.from(document.querySelectorAll("#ranking > li"), (li, index) => {
        const style = getComputedStyle(li);
        const positioned = style.position !== "static" || style.transform !== "none";
        const z = style.zIndex === "auto" ? 0 : Number(style.zIndex);
        const texts = [];
        for (const part of li.querySelectorAll(PARTS)) {
            const range = document.createRange();
            range.selectNodeContents(part);
            let text = box(range.getBoundingClientRect());
            if (getComputedStyle(part).overflowX !== "visible") {
                text = meet(text, box(part.getBoundingClientRect()));
            }
            if (part.textContent && solid(text)) texts.push({part: part.className, box: text});
        }
        return {tid: li.dataset.tid, index, texts, box: box(li.getBoundingClientRect()),
                moving: style.transform !== "none",
                opaque: alpha(style.backgroundColor) >= 1 && Number(style.opacity) >= 1,
                key: positioned ? [z < 0 ? -1 : 1, z, index] : [0, 0, index],
                positioned};
    });
    const above = (a, b) => {  // is a painted above b?
        for (let i = 0; i < 3; i++) if (a.key[i] !== b.key[i]) return a.key[i] > b.key[i];
        return false;
    };
    const visible = (row, text) => {
        let pieces = [text];
        for (const other of rows) {
            if (other === row || !other.opaque || !other.positioned || !above(other, row)) continue;
            pieces = pieces.flatMap((piece) => minus(piece, other.box));
        }
        return pieces;
    };
    let crossings = 0;
    const clashes = [];
    for (const a of rows) {
        for (const b of rows) {
            if (b.index <= a.index) continue;
            for (const ta of a.texts) {
                for (const tb of b.texts) {
                    if (!solid(meet(ta.box, tb.box), SLACK)) continue;
                    crossings += 1;
                    for (const pa of visible(a, ta.box)) {
                        for (const pb of visible(b, tb.box)) {
                            const both = meet(pa, pb);
                            if (!solid(both, SLACK)) continue;
                            clashes.push({rows: [a.tid, b.tid], parts: [ta.part, tb.part],
                                          width: Math.round(both.right - both.left),
                                          height: Math.round(both.bottom - both.top)});
                        }
                    }
                }
            }
        }
    }
    return {rows: rows.length, moving: rows.filter((row) => row.moving).length,
            crossings, clashes};
}"""

# ROW_TEXT every 100 ms for SECONDS, into window.rowSamples (no eval: the page's
# Content-Security-Policy forbids it; Playwright's evaluate is not the page's).
SAMPLE_ROW_TEXT = """(seconds) => {
    const check = ROW_TEXT;
    const samples = window.rowSamples = {taken: [], done: false};
    const started = performance.now();
    const timer = setInterval(() => {
        const at = Math.round(performance.now() - started);
        samples.taken.push({at, ...check()});
        if (at >= 1000 * seconds) { clearInterval(timer); samples.done = true; }
    }, 100);
}""".replace("ROW_TEXT", ROW_TEXT)

# Once the row of track TID slides: every row's slide paused, all moved on
# alike until that row's is MS in (the page as it is then, held).
HOLD_AT = """([tid, ms]) => {
    const slideOf = (li) => li.getAnimations().find((a) => !(a instanceof CSSAnimation));
    const row = document.querySelector(`#ranking > li[data-tid="${tid}"]`);
    const climb = row && slideOf(row);
    if (!climb) return false;
    const by = Math.max(0, ms - climb.currentTime);
    for (const li of document.querySelectorAll("#ranking > li")) {
        const slide = slideOf(li);
        if (!slide) continue;
        slide.pause();
        slide.currentTime = Math.min(slide.currentTime + by, slide.effect.getTiming().duration);
    }
    return true;
}"""


class Reranker:
    """Votes from a thread, ``rate`` a second, each one re-ranking the top 10: an
    up vote for a track in the lower half (or just below the top 10), then a
    down vote for one of the top five; the tallies stay bunched, so one vote
    moves a row past several others."""

    def __init__(self, dsn: str, event_id: int, names: dict[int, str],
                 tallies: dict[int, tuple[int, int]], rate: float = 4.0) -> None:
        self._dsn = dsn
        self._event_id = event_id
        self._names = names
        self._tallies = {tid: list(tallies.get(tid, (0, 0))) for tid in names}
        self._rate = rate
        self._random = random.Random(19)
        self._stopping = threading.Event()
        self.votes = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="reranker", daemon=True)
        self._thread.start()

    def _ranked(self) -> list[int]:
        return sorted(self._tallies, key=lambda tid: (
            -(self._tallies[tid][0] - self._tallies[tid][1]), -self._tallies[tid][0],
            self._names[tid], tid))

    def _run(self) -> None:
        try:
            with Party(self._dsn) as party:
                started = time.monotonic()
                while not self._stopping.is_set():
                    up = self.votes % 2 == 0
                    ranked = self._ranked()
                    track = self._random.choice(ranked[5:12] if up else ranked[:5])
                    party.vote(self._event_id, track, up=up, user_id=100_000 + self.votes)
                    self._tallies[track][0 if up else 1] += 1
                    self.votes += 1
                    self._stopping.wait(started + self.votes / self._rate - time.monotonic())
        except BaseException as error:  # reported by stop()
            self.error = error

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "the voter did not stop"
        if self.error is not None:
            raise AssertionError(f"the voter failed: {self.error!r}") from self.error


def test_rows_re_ranking_never_show_two_texts_on_the_same_pixels(
        daemon: Daemon, party: Party, db_dsn: str, screen: Screen) -> None:
    event_id = party.event("Storm")
    names = {party.track(name, artist): name for name, artist in NAMES}
    user = 0
    for track in names:  # twelve tracks, all tied: every vote re-ranks
        for _ in range(4):
            user += 1
            party.vote(event_id, track, user_id=user)
    screen.page.goto(f"{daemon.url}/?event={event_id}&view=screen")
    screen.expect_state("live")
    expect(screen.page.locator("#ranking li")).to_have_count(10)
    wait_for(lambda: shows_the_top_ten(screen, party, event_id), 15, "the top 10, exact")
    assert screen.page.evaluate(ROW_TEXT)["crossings"] == 0  # at rest: apart

    # 20 s of samples, every 100 ms, while 4 votes a second re-rank the rows.
    screen.page.evaluate(SAMPLE_ROW_TEXT, 20)
    voter = Reranker(db_dsn, event_id, names, party.tallies(event_id), rate=4.0)
    try:
        screen.page.wait_for_function("() => window.rowSamples.done", polling=500,
                                      timeout=120 * SECONDS)
    finally:
        voter.stop()
    samples = screen.page.evaluate("() => window.rowSamples.taken")
    assert voter.votes >= 60
    assert len(samples) >= 100  # 200 unless the machine is very busy
    assert all(sample["rows"] == 10 for sample in samples)
    # The samples caught rows sliding, and passing each other.
    assert sum(sample["moving"] > 0 for sample in samples) >= len(samples) // 4
    assert sum(sample["crossings"] > 0 for sample in samples) >= len(samples) // 4
    clashing = [sample for sample in samples if sample["clashes"]]
    assert clashing == [], (
        f"{len(clashing)} of {len(samples)} samples show two rows' text on the same "
        f"pixels, e.g. {[(sample['at'], sample['clashes'][:2]) for sample in clashing[:5]]}")
    wait_for(lambda: shows_the_top_ten(screen, party, event_id), 15, "the top 10, exact")

    # One frame of a track climbing from 10th to the top, held mid-slide: the
    # screenshot shows it passing over the rows it displaces.
    shown = screen.page.locator("#ranking li")
    top, climber = (int(shown.nth(rank).get_attribute("data-tid") or 0) for rank in (0, 9))
    tallies = party.tallies(event_id)
    lead = (tallies[top][0] - tallies[top][1]) - (tallies[climber][0] - tallies[climber][1]) + 2
    party.query("INSERT INTO event_vote (event_id, track_id, user_id) "
                "SELECT %s, %s, 200000 + n FROM generate_series(1, %s) AS n",
                (event_id, climber, lead))  # one transaction: one move
    screen.page.wait_for_function(HOLD_AT, arg=[climber, 250], timeout=15 * SECONDS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screen.page.screenshot(path=str(SCREENSHOTS / "screen-moving-1080p.png"))
    held = screen.page.evaluate(ROW_TEXT)
    assert held["moving"] > 0 and held["clashes"] == []
    screen.page.evaluate("() => document.getAnimations().forEach((animation) => animation.play())")
    expect(screen.page.locator("#ranking li").first).to_have_attribute("data-tid", str(climber))
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
