"""Server-Sent Events (partysense/web/sse.py) against a real daemon: curl, exact resume,
tokens, limits, slow readers, keepalive."""

from __future__ import annotations

import json
import queue
import secrets
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import jwt
import pytest
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from harness.faults import Voter, committed, last_seq
from tests.sse import Stream
from tests.support import Party
from tests.test_dbcli import refused_port

pytestmark = pytest.mark.daemon

CURL = "/usr/bin/curl"
SECRET = b"k" * 40  # made here, for these tests only


def seqs(stream: Stream) -> list[int]:
    return [change["seq"] for change in stream.changes()]


def test_curl_shows_changes_as_they_commit(daemon: Daemon, party: Party) -> None:
    event_id, track = party.event("Curl"), party.track()
    curl = subprocess.Popen([CURL, "-N", "-s", f"{daemon.url}/events/{event_id}/stream"],
                            stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in curl.stdout],
                     daemon=True).start()
    try:
        # The stream says where it starts at once, before any change.
        assert lines.get(timeout=10).startswith("retry: ")
        assert lines.get(timeout=10) == f"id: {last_seq(party.dsn)}"
        assert lines.get(timeout=10) == ""
        for up in (True, False):
            vote = party.vote(event_id, track, up=up)
            # Django's way is an INSERT, then an UPDATE: one or two changes.
            for seq, _, op in [c for c in committed(party.dsn, event_id) if c[1] == vote]:
                block = [lines.get(timeout=10) for _ in range(4)]
                assert block[:2] == [f"id: {seq}", "event: change"] and block[3] == ""
                assert block[2].startswith("data: ")
                data = json.loads(block[2][6:])
                # The v2 dialect's change message.
                assert data["type"] == "change" and data["sub"] == event_id
                assert (data["vote"], data["eid"], data["op"]) == (vote, event_id, op)
            assert data["up"] is up
    finally:
        curl.terminate()
        curl.wait(10)
    wait_for(lambda: daemon.health()[1]["clients"] == 0, 10, "curl's stream to be let go")


@pytest.mark.parametrize("how", ["header", "query"])
def test_a_reconnect_resumes_exactly_while_votes_flow(daemon: Daemon, party: Party,
                                                      how: str) -> None:
    event_id, track = party.event("Resume"), party.track()
    other = party.event("Other")
    voter = Voter(party.dsn, event_id, track, interval=0.005)
    noise = Voter(party.dsn, other, track, interval=0.01)
    first = Stream(daemon.port, f"/events/{event_id}/stream")
    everything = Stream(daemon.port, "/events/ALL/stream")
    try:
        start = int(wait_for(lambda: first.ids, 10, "the stream's id")[0])
        all_start = int(wait_for(lambda: everything.ids, 10, "the firehose's id")[0])
        wait_for(lambda: len(first.changes()) >= 20, 15, "changes before the cut")
        first.close()  # mid-stream: votes go on
        got = first.changes()
        last = got[-1]["seq"]
        assert first.events[-1]["id"] == str(last)
        wait_for(lambda: voter.votes >= len(got) + 20, 15, "votes while disconnected")
        path = f"/events/{event_id}/stream"
        if how == "header":
            again = Stream(daemon.port, path, {"Last-Event-ID": str(last)})
        else:
            again = Stream(daemon.port, f"{path}?last_event_id={last}")
        wait_for(lambda: len(again.changes()) >= 40, 15, "the replay and live changes")
        cut = len(everything.changes())
        everything.close()
        closed_at = noise.votes
        wait_for(lambda: noise.votes >= closed_at + 10, 15, "votes while the firehose is away")
        all_again = Stream(daemon.port, "/events/ALL/stream",
                           {"Last-Event-ID": everything.events[cut - 1]["id"]})
        voter.stop()
        noise.stop()
        expected = [s for s, _, _ in committed(party.dsn, event_id) if s > start]
        wait_for(lambda: seqs(again) and seqs(again)[-1] >= expected[-1], 15,
                 "the last committed change")
        # Nothing missing, nothing twice, in commit order.
        assert [c["seq"] for c in got] + seqs(again) == expected
        expected_all = [s for s, _, _ in committed(party.dsn) if s > all_start]
        wait_for(lambda: seqs(all_again) and seqs(all_again)[-1] >= expected_all[-1], 15,
                 "the firehose's last change")
        assert seqs(everything)[:cut] + seqs(all_again) == expected_all
        assert {c["eid"] for c in everything.changes()[:cut] + all_again.changes()} == {
            event_id, other}
        again.close()
        all_again.close()
    finally:
        voter.stop()
        noise.stop()


def test_without_last_event_id_the_stream_starts_now(daemon: Daemon, party: Party) -> None:
    event_id, track = party.event(), party.track()
    before = party.vote(event_id, track)
    stream = Stream(daemon.port, f"/events/{event_id}/stream")
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        start = wait_for(lambda: stream.ids, 10, "the stream's starting id")[0]
        assert int(start) == last_seq(party.dsn)
        after = party.vote(event_id, track)
        wait_for(lambda: stream.changes(), 10, "the new vote")
        assert [c["vote"] for c in stream.changes()] == [after]
        assert before != after
    finally:
        stream.close()


@pytest.mark.parametrize(("path", "headers", "status", "kind"), [
    ("/events/424242/stream", {}, 404, "unknown_event"),
    ("/events/abc/stream", {}, 400, "bad_event_id"),
    ("/events/0/stream", {}, 400, "bad_event_id"),
    ("/events/99999999999999999999/stream", {}, 400, "bad_event_id"),
    ("/events/ALL/stream", {"Last-Event-ID": "-1"}, 400, "bad_last_event_id"),
    ("/events/ALL/stream?last_event_id=x", {}, 400, "bad_last_event_id"),
    ("/events/ALL", {}, 404, "not_found"),
    ("/events/ALL/stream/more", {}, 404, "not_found"),
])
def test_bad_requests_are_refused_clearly(daemon: Daemon, path: str, headers: dict[str, str],
                                          status: int, kind: str) -> None:
    refused = Stream(daemon.port, path, headers, read=False)
    assert refused.status == status
    assert refused.json_body()["error"] == kind
    refused.close()
    assert daemon.health()[1]["clients"] == 0


def test_a_refusal_after_the_lookup_closes_its_connection(daemon: Daemon) -> None:
    """Streams are exempt from the handshake deadline: a refused one must not stay
    behind as an idle keep-alive connection."""
    refused = Stream(daemon.port, "/events/424242/stream", read=False)
    assert refused.json_body()["error"] == "unknown_event"
    refused.sock.settimeout(10)
    assert refused.sock.recv(1) == b""
    refused.close()


def test_cors_for_pages_on_other_origins(db_dsn: str, tmp_path: Path, party: Party) -> None:
    path = f"/events/{party.event()}/stream"
    with Daemon(db_dsn, tmp_path, "--allowed-origins", "https://party.example") as daemon:
        allowed = Stream(daemon.port, path, {"Origin": "https://party.example"})
        assert allowed.status == 200
        assert allowed.headers["access-control-allow-origin"] == "https://party.example"
        allowed.close()
        other = Stream(daemon.port, path, {"Origin": "https://evil.example"}, read=False)
        assert other.status == 403 and other.json_body()["error"] == "origin_not_allowed"
        other.close()
    with Daemon(db_dsn, tmp_path) as daemon:
        anyone = Stream(daemon.port, path, {"Origin": "https://overlay.example"})
        assert anyone.status == 200 and anyone.headers["access-control-allow-origin"] == "*"
        anyone.close()


def test_a_stream_ends_when_its_token_expires(db_dsn: str, tmp_path: Path,
                                              party: Party) -> None:
    event_id = party.event()
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    token = jwt.encode({"exp": int(time.time()) + 2, "events": [event_id]}, SECRET,
                       algorithm="HS256")
    with Daemon(db_dsn, tmp_path, "--token-secret-file", str(secret)) as daemon:
        stream = Stream(daemon.port, f"/events/{event_id}/stream?token={token}")
        assert stream.status == 200
        wait_for(lambda: stream.finished, 15, "the stream to end at the token's exp")
        assert [e["event"] for e in stream.events] == ["token_expired"]
        stream.close()
        wait_for(lambda: daemon.health()[1]["clients"] == 0, 10, "the stream to be let go")


def test_without_the_database_a_stream_is_told_to_retry(tmp_path: Path) -> None:
    with refused_port() as port:
        dsn = f"host=127.0.0.1 port={port} dbname=gone user=nobody connect_timeout=1"
        daemon = Daemon(dsn, tmp_path, "--grace", "1")
        daemon.start(wait=False)
        try:
            refused = Stream(daemon.port, "/events/ALL/stream", read=False)  # after --grace
            assert refused.status == 503
            assert refused.json_body()["error"] == "unavailable"
            assert refused.headers["retry-after"] == "5"
            refused.close()
            assert daemon.health()[0] == 503  # up, and saying why not healthy
        finally:
            daemon.stop()


def test_an_expired_token_is_told_token_expired(tmp_path: Path) -> None:
    """Expired long ago, a few seconds ago (within the clock-skew leeway), or
    while the stream waits for the database: 401 ``token_expired``, never 503."""
    # Printable: the file's surrounding whitespace is stripped (docs/security.md).
    secret = secrets.token_urlsafe(32).encode("ascii")
    (tmp_path / "secret").write_bytes(secret)

    def expiring(seconds: float) -> str:
        return jwt.encode({"exp": int(time.time() + seconds), "events": "*"}, secret,
                          algorithm="HS256")

    with refused_port() as port:  # no database: a stream waits for it (--grace)
        dsn = f"host=127.0.0.1 port={port} dbname=gone user=nobody connect_timeout=1"
        daemon = Daemon(dsn, tmp_path, "--grace", "60", "--token-secret-file",
                        str(tmp_path / "secret"))
        daemon.start(wait=False)
        try:
            for seconds in (-120, -5, 2):
                stream = Stream(daemon.port, f"/events/ALL/stream?token={expiring(seconds)}",
                                read=False)
                assert (stream.status, stream.json_body()["error"]) == \
                    (401, "token_expired"), seconds
                stream.close()
        finally:
            daemon.stop()


def test_tokens_bearer_or_query(db_dsn: str, tmp_path: Path, party: Party) -> None:
    event_id, other = party.event("Mine"), party.event("Theirs")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    token = jwt.encode({"exp": int(time.time()) + 600, "events": [event_id]}, SECRET,
                       algorithm="HS256")
    with Daemon(db_dsn, tmp_path, "--token-secret-file", str(secret)) as daemon:
        path = f"/events/{event_id}/stream"
        missing = Stream(daemon.port, path, read=False)
        assert missing.status == 401 and missing.json_body()["error"] == "unauthorized"
        wrong = Stream(daemon.port, f"/events/{other}/stream?token={token}", read=False)
        assert wrong.status == 403 and wrong.json_body()["error"] == "forbidden"
        forged = jwt.encode({"exp": int(time.time()) + 600, "events": "*"}, b"x" * 40,
                            algorithm="HS256")
        assert Stream(daemon.port, f"{path}?token={forged}", read=False).status == 401
        streams = [Stream(daemon.port, path, {"Authorization": f"Bearer {token}"}),
                   Stream(daemon.port, f"{path}?token={token}")]
        assert [s.status for s in streams] == [200, 200]
        vote = party.vote(event_id, party.track())
        for stream in streams:
            wait_for(lambda s=stream: s.changes(), 10, "the vote")
            assert stream.changes()[0]["vote"] == vote
            stream.close()
        wait_for(lambda: daemon.health()[1]["clients"] == 0, 10, "the streams to go")
    log = daemon.log()
    assert "token=***" in log and token not in log


def test_a_slow_reader_is_closed_without_disturbing_others(db_dsn: str, tmp_path: Path,
                                                          party: Party) -> None:
    event_id = party.event("Slow")
    track = party.track("n" * 256, "a" * 256)  # about 1 kB an event
    votes = 8000  # 8 MB: more than the kernel's buffers hold
    with Daemon(db_dsn, tmp_path, "--max-queue-bytes", str(128 * 1024)) as daemon:
        fast = Stream(daemon.port, f"/events/{event_id}/stream")
        slow = Stream(daemon.port, f"/events/{event_id}/stream", rcvbuf=4096, read=False)
        wait_for(lambda: fast.ids, 10, "the fast stream to start")
        wait_for(lambda: daemon.health()[1]["clients"] == 2, 10, "both streams")
        party.query("INSERT INTO event_vote (event_id, track_id) "
                    "SELECT %s, %s FROM generate_series(1, %s)", (event_id, track, votes))
        wait_for(lambda: len(fast.changes()) >= votes, 60, "every change at the fast one")
        got = seqs(fast)
        assert got == [s for s, _, _ in committed(party.dsn, event_id)]
        wait_for(lambda: daemon.health()[1]["clients"] == 1, 30, "the slow one to be closed")
        assert "(too_slow)" in daemon.log()
        fast.close()
        slow.close()


def test_streams_share_the_websocket_limits(db_dsn: str, tmp_path: Path, party: Party) -> None:
    event_id = party.event()
    path = f"/events/{event_id}/stream"
    # Three per address: the third connection is let in, to meet --max-clients.
    with Daemon(db_dsn, tmp_path, "--max-clients", "2", "--max-connections-per-ip", "3") as daemon:
        with connect(daemon.ws_url, open_timeout=10):
            stream = Stream(daemon.port, path)
            assert stream.status == 200
            wait_for(lambda: daemon.health()[1]["clients"] == 2, 10, "a WebSocket and a stream")
            full = Stream(daemon.port, path, read=False)
            assert full.status == 503 and full.json_body()["error"] == "server_full"
            stream.close()
        wait_for(lambda: daemon.health()[1]["clients"] == 0, 10, "both to be let go")
    with Daemon(db_dsn, tmp_path, "--max-connections-per-ip", "1") as daemon:
        stream = Stream(daemon.port, path)
        wait_for(lambda: daemon.health()[1]["clients"] == 1, 10, "the stream")
        # Counted from accept (partysense/wire/waiting.py): refused before its request is read.
        more = Stream(daemon.port, path, read=False)
        assert more.status == 429 and b"--max-connections-per-ip" in more.whole_body()
        assert more.reason == "Too Many Requests"
        stream.close()


def test_keepalives_keep_a_stream_past_the_handshake_deadline(db_dsn: str, tmp_path: Path,
                                                              party: Party) -> None:
    event_id = party.event()
    with Daemon(db_dsn, tmp_path, "--sse-keepalive", "0.3", "--handshake-timeout",
                "1") as daemon:
        stream = Stream(daemon.port, f"/events/{event_id}/stream")
        # Ten keepalives are three seconds: past the deadline that closes
        # connections that never upgrade.
        wait_for(lambda: stream.comments.count("keepalive") >= 10, 20, "keepalives")
        assert not stream.ended
        vote = party.vote(event_id, party.track())
        wait_for(lambda: stream.changes(), 10, "a change after the deadline")
        assert stream.changes()[0]["vote"] == vote
        stream.close()


def test_shutdown_ends_streams_cleanly(db_dsn: str, tmp_path: Path, party: Party) -> None:
    event_id = party.event()
    daemon = Daemon(db_dsn, tmp_path).start()
    stream = Stream(daemon.port, f"/events/{event_id}/stream")
    wait_for(lambda: stream.ids, 10, "the stream to start")
    daemon.stop()
    wait_for(lambda: stream.ended, 10, "the stream to end")
    assert stream.finished, "the stream was cut, not ended"
    assert stream.body.endswith(b"\n\n")  # whole events only
    stream.close()
    log = daemon.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


def test_metrics_count_streams(daemon: Daemon, party: Party) -> None:
    stream = Stream(daemon.port, "/events/ALL/stream")
    wait_for(lambda: stream.ids, 10, "the stream to start")
    with urllib.request.urlopen(daemon.admin_url + "/metrics") as page:
        text = page.read().decode()
    assert 'partysense_clients_by_protocol{protocol="sse"} 1.0' in text
    stream.close()


def test_each_worker_serves_its_own_streams(db_dsn: str, tmp_path: Path, party: Party) -> None:
    event_id, track = party.event(), party.track()
    with Daemon(db_dsn, tmp_path, "--workers", "2") as daemon:
        streams = [Stream(daemon.port, f"/events/{event_id}/stream") for _ in range(4)]
        for stream in streams:
            wait_for(lambda s=stream: s.ids, 10, "every stream to start")
        vote = party.vote(event_id, track)
        expected = [seq for seq, v, _ in committed(party.dsn, event_id) if v == vote]
        for stream in streams:
            wait_for(lambda s=stream: seqs(s) == expected, 10, "the vote at every stream")
            stream.close()
