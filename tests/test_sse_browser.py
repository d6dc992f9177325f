"""A real EventSource in Chromium on /events/<id>/stream, across a daemon restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.daemon import Daemon, wait_for
from harness.faults import Voter, committed
from tests.browser import chromium
from tests.support import Party

pytestmark = pytest.mark.browser

# Served on the daemon's origin by Playwright (page.route), so the stream is
# same-origin; nothing of the product's page is involved.
PAGE = """<!doctype html><meta charset="utf-8"><title>SSE</title><script>
window.got = []; window.opens = 0; window.errors = 0;
const source = new EventSource(new URLSearchParams(location.search).get("stream"));
source.onopen = () => { window.opens += 1; };
source.onerror = () => { window.errors += 1; };
source.addEventListener("change", (e) => {
  const change = JSON.parse(e.data);
  window.got.push([Number(e.lastEventId), change.seq]);
});
</script>"""


def test_an_event_source_resumes_across_a_restart_with_nothing_lost(
        db_dsn: str, tmp_path: Path, party: Party) -> None:
    event_id, track = party.event("Restart"), party.track()
    daemon = Daemon(db_dsn, tmp_path).start()
    voter = None
    try:
        with chromium() as browser:
            page = browser.new_page()
            test_page = f"{daemon.url}/sse-test"
            page.route(lambda url: url.startswith(test_page), lambda route: route.fulfill(
                status=200, content_type="text/html", body=PAGE))
            page.goto(f"{daemon.url}/sse-test?stream=/events/{event_id}/stream")

            def received() -> list[list[int]]:
                return list(page.evaluate("window.got"))

            wait_for(lambda: page.evaluate("window.opens") == 1, 15, "the stream to open")
            voter = Voter(db_dsn, event_id, track, interval=0.02)  # every change after the open
            wait_for(lambda: len(received()) >= 20, 15, "changes before the restart")
            daemon.stop()
            before = voter.votes
            wait_for(lambda: voter.votes >= before + 20, 15, "votes while the daemon is down")
            daemon.start()
            wait_for(lambda: page.evaluate("window.opens") >= 2, 30,
                     "the EventSource to reconnect by itself")
            at_restart = len(received())
            wait_for(lambda: len(received()) >= at_restart + 20, 15, "changes after the restart")
            voter.stop()
            expected = [seq for seq, _, _ in committed(db_dsn, event_id)]
            wait_for(lambda: received()[-1][1] >= expected[-1], 15, "the last change")
            got = received()
            assert page.evaluate("window.errors") >= 1  # it did lose the connection
            # Nothing missing, nothing twice, in commit order; each event's id is its seq.
            assert [seq for _, seq in got] == expected
            assert all(event_id_ == seq for event_id_, seq in got)
    finally:
        if voter is not None:
            voter.stop()
        daemon.stop()
