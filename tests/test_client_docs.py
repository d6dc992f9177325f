"""docs/client.md's Python consumers do what the page says they do.

The WebSocket one runs as a script against the real daemon and must end on
SQL's tallies; the SSE one reads the daemon's real stream, and a stand-in
that records what it is asked proves it resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.daemon import Daemon, wait_for
from tests.support import Party

DOC = Path(__file__).resolve().parent.parent / "docs" / "client.md"


def code_under(marker: str) -> str:
    """The ```python block right under ``<!-- marker -->`` in docs/client.md."""
    text = DOC.read_text("utf-8")
    start = text.index(f"<!-- {marker} -->\n```python\n") + len(f"<!-- {marker} -->\n```python\n")
    return text[start:text.index("```", start)]


@pytest.mark.daemon
def test_the_websockets_consumer_keeps_exact_tallies(
        daemon: Daemon, party: Party, tmp_path: Path) -> None:
    event_id = party.event()
    hit, other = party.track("Hit"), party.track("Other")
    party.vote(event_id, hit, user_id=1)
    script = tmp_path / "watch.py"
    script.write_text(code_under("python-websockets"), "utf-8")
    assert len([line for line in script.read_text("utf-8").splitlines() if line.strip()]) <= 12
    process = subprocess.Popen([sys.executable, str(script), daemon.ws_url + "/", str(event_id)],
                               stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()],
                     daemon=True).start()
    try:
        # Subscribed once the daemon listens to the event (the detailed /healthz says).
        wait_for(lambda: f"event_{event_id}" in (daemon.health() or (0, {}))[1].get(
            "channels", []), 15, "the script to subscribe")
        party.vote(event_id, other, up=False, user_id=2)   # insert, update
        withdrawn = party.vote(event_id, hit, user_id=3)   # insert
        party.query("DELETE FROM event_vote WHERE id = %s", (withdrawn,))
        party.vote(event_id, hit, up=False, user_id=4)     # insert, update
        wanted = {tid: list(counts) for tid, counts in party.tallies(event_id).items()}
        names = {"Hit": hit, "Other": other}
        printed: list[tuple[int, int, list[int]]] = []

        def shown() -> dict[int, list[int]]:
            while not lines.empty():
                seq, track, up, down = lines.get().split()
                printed.append((int(seq), names[track], [int(up), int(down)]))
            return {tid: counts for _, tid, counts in printed}

        wait_for(lambda: shown() == wanted, 15, "the script's tallies to be SQL's")
        assert len(printed) == 6  # each change once
        assert [seq for seq, _, _ in printed] == sorted({seq for seq, _, _ in printed})
    finally:
        process.terminate()
        process.wait(10)


STREAM = [  # what the stand-in endpoint sends: two changes, then (resumed) one more
    [(10, {"seq": 10, "op": "insert", "track": "A\nB"}), (11, {"seq": 11, "op": "delete"})],
    [(12, {"seq": 12, "op": "update"})],
]


class FakeStream(BaseHTTPRequestHandler):
    """GET /events/3/stream as docs/protocol.md describes it; notes what it was asked."""

    asked: list[dict[str, Any]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.asked.append({"path": self.path, "last": self.headers.get("Last-Event-ID"),
                           "auth": self.headers.get("Authorization")})
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for seq, change in STREAM[min(len(self.asked), len(STREAM)) - 1]:
            self.wfile.write(f": keepalive\nid: {seq}\nevent: change\n"
                             f"data: {json.dumps(change)}\n\n".encode())
        self.wfile.flush()
        if len(self.asked) >= len(STREAM):
            threading.Event().wait(5)  # then stays open, as a live stream does

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_stream() -> Iterator[str]:
    FakeStream.asked = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeStream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.logic
def test_the_sse_consumer_reads_changes_and_resumes_with_last_event_id(fake_stream: str) -> None:
    namespace: dict[str, Any] = {}
    exec(code_under("python-sse"), namespace)  # noqa: S102 (our own documentation)
    changes = namespace["changes"](fake_stream, 3, token="t0k3n")
    got = [next(changes) for _ in range(3)]
    assert got == [change for part in STREAM for _, change in part]
    assert FakeStream.asked == [
        {"path": "/events/3/stream", "last": None, "auth": "Bearer t0k3n"},
        {"path": "/events/3/stream", "last": "11", "auth": "Bearer t0k3n"},
    ]


@pytest.mark.daemon
def test_the_sse_consumer_reads_the_daemons_stream_exactly(daemon: Daemon, party: Party) -> None:
    from harness.faults import committed

    event_id = party.event()
    track = party.track("Hit")
    namespace: dict[str, Any] = {}
    exec(code_under("python-sse"), namespace)  # noqa: S102 (our own documentation)
    changes = namespace["changes"](daemon.url, event_id)
    got: queue.Queue[dict[str, Any]] = queue.Queue()
    threading.Thread(target=lambda: [got.put(change) for change in changes], daemon=True).start()
    first: list[dict[str, Any]] = []

    def streaming() -> bool:
        # A stream starts at the moment it opens: vote until a change comes through.
        party.vote(event_id, track, user_id=100 + len(first))
        try:
            first.append(got.get(timeout=0.5))
        except queue.Empty:
            return False
        return True

    wait_for(streaming, 20, "the stream to carry a change")
    for user in range(5):
        party.vote(event_id, track, up=user % 2 == 0, user_id=user + 1)
    log = [change for change in committed(party.dsn, event_id) if change[0] > first[0]["seq"]]
    received = [got.get(timeout=15) for _ in log]
    assert [(c["seq"], c["vote"], c["op"]) for c in received] == log
    assert len(log) >= 5 and got.empty()
