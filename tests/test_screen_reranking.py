"""The projector's rows re-ranking under a vote storm, in a real headless Chromium.

Screenshot (artifacts/screenshots/): ``screen-moving-1080p`` is one frame,
held, of a track climbing from 10th to the top.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from playwright.sync_api import expect

from harness.daemon import Daemon, wait_for
from tests.browser import SCREENSHOTS, SECONDS, Screen
from tests.screen_support import NAMES, shows_the_top_ten
from tests.support import Party

pytestmark = pytest.mark.browser


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
