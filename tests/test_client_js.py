"""/client.js alone, in a real headless Chromium, against the real daemon and PostgreSQL.

The module is imported the way the PartySense web app will import it: by a
page of another origin (a one-page HTTP server of the test's own, on another
port), so the CORS header that lets a module be imported across origins is
checked too. Nothing of this test page is served by the daemon. (Playwright's
router cannot stand in for that server: Chromium counts a routed page as
public, and refuses it the loopback daemon.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.daemon import Daemon, wait_for
from harness.faults import Voter
from partysense.dialects.tokens import mint
from tests.support import Party

pytestmark = pytest.mark.browser

# What the module keeps, in the shape of tests.browser.as_sql_says.
MODULE_TALLIES = """() => Object.fromEntries(Array.from(window.live.tracks.values(),
    (row) => [String(row.tid), [row.up, row.down]]))"""

# Connects with the options given (getToken, if asked for, is the test's
# mintToken) and records what the callbacks saw.
CONNECT = """(options) => {
    const record = window.record = {snapshots: [], seqs: [], states: [], errors: [], asks: 0};
    const live = window.live = window.partysense.connect({
        event: options.event,
        token: options.token,
        getToken: options.refresh ? async () => {
            record.asks += 1;
            return await window.mintToken();
        } : undefined,
        onSnapshot: (live, {reset}) => record.snapshots.push({cursor: live.cursor, reset}),
        onChange: (change) => record.seqs.push(change.seq),
        onStatus: (status) => record.states.push(status.state),
        onError: (error) => record.errors.push(error.error),
    });
    return live.url;
}"""


def embedding_page(daemon: Daemon) -> str:
    # The icon is inline: else Chromium asks this page's server for /favicon.ico
    # whenever it gets round to it, and on a loaded machine that came after the
    # server had stopped (serving() ends once the module is imported): a console
    # error, "Failed to load resource", that failed the test's "no problems".
    return f"""<!DOCTYPE html><meta charset="utf-8"><link rel="icon" href="data:,">
<title>embedded</title>
<script type="module">
import {{connect}} from "{daemon.url}/client.js";
window.partysense = {{connect}};
</script>"""


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


@contextmanager
def serving(html: str) -> Iterator[str]:
    """``html`` at http://127.0.0.1:PORT/ from a thread, for as long as the block runs."""
    body = html.encode("utf-8")

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def open_embedding_page(page: Any, daemon: Daemon) -> list[str]:
    """A page of another origin that imports the module; returns its errors (the
    browser's own note of a refused connection while the daemon is down aside)."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" and not message.text.startswith(
                "WebSocket connection to") else None)
    with serving(embedding_page(daemon)) as url:
        assert not url.startswith(daemon.url + "/")  # another origin
        page.goto(url)
        page.wait_for_function("() => window.partysense !== undefined", timeout=15_000)
    return problems


def module_tallies(page: Any) -> dict[str, list[int]]:
    return dict(page.evaluate(MODULE_TALLIES))


def expect_exact(page: Any, party: Party, event_id: int, timeout: float = 30.0) -> None:
    wanted = {str(tid): [up, down] for tid, (up, down) in party.tallies(event_id).items()}
    try:
        wait_for(lambda: module_tallies(page) == wanted, timeout, "the module's tallies")
    except AssertionError:
        raise AssertionError(
            f"the module keeps {module_tallies(page)}, SQL says {wanted}") from None


def state(page: Any) -> str:
    return str(page.evaluate("() => window.live.status.state"))


def test_exact_tallies_after_forced_disconnects_while_votes_flow(
        daemon: Daemon, party: Party, db_dsn: str, page: Any) -> None:
    event_id = party.event("Marathon")
    first, second = party.track("One"), party.track("Two")
    party.vote(event_id, first, up=True, user_id=10_000)
    problems = open_embedding_page(page, daemon)
    # The module found its daemon by itself: where it was imported from.
    assert page.evaluate(CONNECT, {"event": event_id}) == f"{daemon.ws_url}/"
    wait_for(lambda: state(page) == "live", 15, "the module to be live")
    expect_exact(page, party, event_id)

    voters = [Voter(db_dsn, event_id, first, interval=0.03),
              Voter(db_dsn, event_id, second, interval=0.05)]
    try:
        wait_for(lambda: all(v.votes >= 5 for v in voters), 15, "votes to flow")
        # 1. The daemon goes away and comes back on its port, votes all along.
        port = daemon.port
        daemon.stop()
        wait_for(lambda: state(page) == "reconnecting", 15, "the module to notice")
        daemon.start()
        assert daemon.port == port
        wait_for(lambda: state(page) == "live", 30, "the module to resume")
        # 2. The network goes away (no close handshake), votes all along.
        page.context.set_offline(True)
        wait_for(lambda: state(page) == "offline", 15, "the module to go offline")
        before = sum(v.votes for v in voters)
        wait_for(lambda: sum(v.votes for v in voters) > before + 5, 15, "votes while offline")
        page.context.set_offline(False)
        wait_for(lambda: state(page) == "live", 30, "the module to come back")
        wait_for(lambda: sum(v.votes for v in voters) > before + 15, 15, "votes after")
    finally:
        for voter in voters:
            voter.stop()

    expect_exact(page, party, event_id)
    record = page.evaluate("() => window.record")
    # One snapshot, then resumed by cursor twice (no reset): every change
    # once, in order, and each is one the log holds.
    assert record["snapshots"] == [{"cursor": record["snapshots"][0]["cursor"], "reset": False}]
    seqs = record["seqs"]
    assert seqs == sorted(set(seqs))
    logged = [seq for (seq,) in party.query(
        "SELECT seq FROM partysense_change WHERE event_id = %s AND seq > %s ORDER BY seq",
        (event_id, record["snapshots"][0]["cursor"]))]
    assert seqs == logged
    assert {"reconnecting", "offline", "live"} <= set(record["states"])
    assert record["errors"] == []
    assert problems == []


@pytest.fixture
def secret(tmp_path: Path) -> bytes:
    value = b"s" * 40  # made here, for this test only
    (tmp_path / "token.secret").write_bytes(value)
    return value


def test_an_expiring_token_is_refreshed_through_get_token(
        db_dsn: str, tmp_path: Path, party: Party, secret: bytes, page: Any) -> None:
    event_id, track_id = party.event("Private"), party.track("Hush")
    party.vote(event_id, track_id, user_id=10_000)
    minted: list[str] = []

    def fresh_token() -> str:
        # Three seconds each: the daemon says token_expired at exp (the 30 s
        # of leeway are for checking a token, not for its expiry timer).
        minted.append(mint(secret, [event_id], 3, time.time()))
        return minted[-1]

    with Daemon(db_dsn, tmp_path, "--token-secret-file", str(tmp_path / "token.secret")) \
            as daemon:
        problems = open_embedding_page(page, daemon)
        page.expose_function("mintToken", fresh_token)
        page.evaluate(CONNECT, {"event": event_id, "token": fresh_token(), "refresh": True})
        wait_for(lambda: state(page) == "live", 15, "the module to be live")
        voter = Voter(db_dsn, event_id, track_id, interval=0.05)
        try:
            # Asked twice: the second expiry comes only if the daemon took the
            # first fresh token (it times the expiry of the token it holds).
            wait_for(lambda: page.evaluate("() => window.record.asks") >= 2, 30,
                     "getToken to be asked twice")
        finally:
            voter.stop()
        expect_exact(page, party, event_id)
        record = page.evaluate("() => window.record")
        assert len(record["snapshots"]) == 1 and record["errors"] == []
        # Never disconnected, never refused.
        assert "reconnecting" not in record["states"] and "unauthorized" not in record["states"]
        assert record["seqs"] == sorted(set(record["seqs"]))
        assert voter.votes > 0 and len(minted) >= 3
        assert not any(token in daemon.log() for token in minted)
    assert problems == []


def test_a_refused_token_is_replaced_or_reported(
        db_dsn: str, tmp_path: Path, party: Party, secret: bytes, page: Any) -> None:
    event_id, track_id = party.event("Private"), party.track("Hush")
    party.vote(event_id, track_id)
    stale = mint(secret, [event_id], 60, time.time() - 3600)  # expired an hour ago
    with Daemon(db_dsn, tmp_path, "--token-secret-file", str(tmp_path / "token.secret")) \
            as daemon:
        problems = open_embedding_page(page, daemon)
        # Without getToken: refused, and said so; no retry loop.
        page.evaluate(CONNECT, {"event": event_id, "token": stale})
        wait_for(lambda: state(page) == "unauthorized", 15, "the module to say unauthorized")
        assert page.evaluate("() => window.record.errors") == ["unauthorized"]
        page.evaluate("() => window.live.close()")
        assert state(page) == "closed"

        # With getToken: the refusal asks for a fresh token, then the snapshot.
        page.expose_function("mintToken", lambda: mint(secret, [event_id], 600, time.time()))
        page.evaluate(CONNECT, {"event": event_id, "token": stale, "refresh": True})
        wait_for(lambda: state(page) == "live", 15, "the module to be live")
        expect_exact(page, party, event_id)
        assert page.evaluate("() => window.record.asks") == 1
        party.vote(event_id, track_id, up=False, user_id=2)
        expect_exact(page, party, event_id)
    # v2 refusals are messages on an open socket: the browser logs nothing.
    assert problems == []
