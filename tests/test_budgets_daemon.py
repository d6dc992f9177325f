"""Budgets per address on a real daemon (issue 15): what one address reconnecting in a
loop may cost, and what a venue of phones behind one NAT address still gets.

Queries are counted as the database counts them: the transactions committed in the
test's own database (``pg_stat_database.xact_commit``), read once the numbers have
settled (a backend reports its counts within a second or so of going idle).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from harness.faults import committed
from tests.sse import Stream
from tests.support import Party

pytestmark = pytest.mark.daemon

V2 = ["partysense.v2"]


def transactions(dsn: str) -> int:
    """Transactions committed so far in the database (as its statistics say)."""
    connection = psycopg2.connect(dsn)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT xact_commit FROM pg_stat_database "
                           "WHERE datname = current_database()")
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def settled_transactions(dsn: str, timeout: float = 60.0) -> int:
    """The count once it stops jumping: what the daemon did has been reported."""
    deadline = time.monotonic() + timeout
    last = transactions(dsn)
    while time.monotonic() < deadline:
        time.sleep(1.5)  # statistics are reported at most once a second per backend
        now = transactions(dsn)
        if now - last <= 6:  # the probes and polls of an idle daemon, and ours
            return now
        last = now
    raise AssertionError(f"the transaction count did not settle within {timeout} s")


def subscribed(url: str, events: list[int]) -> list[dict[str, Any]]:
    """Connect, subscribe to ``events``, close: the answers (fewer if the
    daemon closed the connection: 4029)."""
    client = connect(url, subprotocols=V2, open_timeout=30)
    answers = []
    try:
        for event in events:
            client.send(json.dumps({"type": "subscribe", "event": event}))
        for _ in events:
            answers.append(json.loads(client.recv(timeout=30)))
    except ConnectionClosed:
        pass
    finally:
        try:
            client.close()
        except ConnectionClosed:
            pass
    return answers


def test_a_reconnect_loop_with_unknown_ids_makes_few_lookups(db_dsn: str,
                                                             tmp_path: Path) -> None:
    """Before: every unknown id cost a query (1,200 here; ~6,000 a second in the issue)."""
    with Daemon(db_dsn, tmp_path) as daemon:
        before = settled_transactions(db_dsn)
        errors: list[str] = []
        for loop in range(30):
            unknown = [1_000_000 + 40 * loop + n for n in range(40)]
            errors += [a.get("error", a["type"]) for a in subscribed(daemon.ws_url, unknown)]
        used = settled_transactions(db_dsn) - before
    assert errors and set(errors) <= {"unknown_event", "too_many_subscribes"}
    assert errors.count("unknown_event") >= 1000  # the budget holds a venue's worth
    assert used < 300, f"{used} transactions for {len(errors)} unknown ids"


def test_a_reconnect_loop_over_real_events_is_bounded_per_address(
        db_dsn: str, tmp_path: Path, party: Party) -> None:
    """Before: each reconnection brought a new budget of 40 subscribes, a snapshot each."""
    events = [party.event(f"E{n}") for n in range(120)]
    # A venue of 8 phones: 16 subscribes at once, then 0.8 a second, for the address.
    with Daemon(db_dsn, tmp_path, "--max-connections-per-ip", "8") as daemon:
        started = time.monotonic()
        answers: list[dict[str, Any]] = []
        for loop in range(10):
            answers += subscribed(daemon.ws_url, [events[(40 * loop + n) % len(events)]
                                                  for n in range(40)])
        elapsed = time.monotonic() - started
    snapshots = sum(1 for answer in answers if answer["type"] == "snapshot")
    refused = [a for a in answers if a.get("error") == "too_many_subscribes"]
    assert snapshots <= 16 + 0.8 * elapsed + 1, f"{snapshots} snapshots in {elapsed:.1f} s"
    assert refused and "your address" in refused[0]["message"]


def test_a_replay_flood_from_one_address_is_bounded(db_dsn: str, tmp_path: Path,
                                                    party: Party) -> None:
    """Before: every Last-Event-ID far back was a replay, as many as were asked for."""
    event_id, track = party.event(), party.track()
    # A venue of 4 phones: 800 rows replayed at once, then 40 a second.
    with Daemon(db_dsn, tmp_path, "--max-connections-per-ip", "4",
                "--trusted-proxies", "1") as daemon:
        # Voted once the daemon runs: with --source wal the log begins with its relay.
        party.query("INSERT INTO event_vote (event_id, track_id, user_id) "
                    "SELECT %s, %s, g FROM generate_series(1, 1000) AS g", (event_id, track))
        log = committed(db_dsn, event_id)
        assert len(log) == 1000
        before = str(log[0][0] - 1)  # all 1,000 to replay (0 in the listen mode)
        flood = {"Last-Event-ID": before, "X-Forwarded-For": "198.51.100.7"}
        streams = [Stream(daemon.port, f"/events/{event_id}/stream", flood)
                   for _ in range(3)]  # fewer than --max-connections-per-ip
        other = Stream(daemon.port, f"/events/{event_id}/stream",
                       {"Last-Event-ID": before, "X-Forwarded-For": "198.51.100.8"})
        try:
            assert [s.status for s in streams] == [200, 429, 429]
            assert streams[1].headers.get("retry-after") == "5"
            assert other.status == 200  # another address has its own budget
            assert "too_many_replays" in daemon.log()
        finally:
            for stream in streams + [other]:
                stream.sock.close()


def test_a_venue_of_1000_phones_behind_one_address_is_served(db_dsn: str, tmp_path: Path,
                                                             party: Party) -> None:
    """The budgets are per address: they must not turn a venue's own phones away."""
    event_id = party.event()
    with Daemon(db_dsn, tmp_path, "--trusted-proxies", "1") as daemon:
        got = asyncio.run(phones(daemon.ws_url, event_id, 1000))
    assert got == {"snapshot": 1000}, got


async def phones(url: str, event_id: int, count: int) -> dict[str, int]:
    """``count`` v2 clients behind one NAT address, all at once: what each got first."""
    nat = {"X-Forwarded-For": "203.0.113.50"}
    opened: list[Any] = []
    firsts: dict[str, int] = {}

    async def phone() -> None:
        client = await connect_async(url, subprotocols=V2,  # type: ignore[list-item]
                                     additional_headers=nat, open_timeout=60,
                                     ping_interval=None)
        opened.append(client)
        await client.send(json.dumps({"type": "subscribe", "event": event_id}))
        answer = json.loads(await asyncio.wait_for(client.recv(), 60))
        kind = answer.get("error", answer["type"])
        firsts[kind] = firsts.get(kind, 0) + 1

    try:
        await asyncio.gather(*(phone() for _ in range(count)))
    finally:
        await asyncio.gather(*(client.close() for client in opened), return_exceptions=True)
    return firsts


def test_the_pulse_of_no_event_is_a_404(db_dsn: str, tmp_path: Path, party: Party) -> None:
    event_id = party.event()
    with Daemon(db_dsn, tmp_path) as daemon:
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{daemon.url}/api/events/424242/pulse", timeout=30)
        assert missing.value.code == 404
        assert json.loads(missing.value.read())["error"] == "unknown_event"
        with urllib.request.urlopen(f"{daemon.url}/api/events/{event_id}/pulse",
                                    timeout=30) as found:
            assert json.loads(found.read())["event"] == event_id


def test_a_reconnect_loop_cycling_real_events_is_answered_from_memory(
        db_dsn: str, tmp_path: Path, party: Party) -> None:
    """Before: every subscribe after a reconnect cost a LISTEN, a snapshot (or a
    replay) and an UNLISTEN; the channels now linger LISTENed (--linger) and the
    events' kept reads stay exact, so a round after the first costs no query."""
    events = [party.event(f"E{n}") for n in range(64)]
    with Daemon(db_dsn, tmp_path) as daemon:
        before = settled_transactions(db_dsn)
        snapshots = 0
        for loop in range(10):  # 32 subscriptions a connection: each half in turn
            answers = subscribed(daemon.ws_url, events[32 * (loop % 2):][:32])
            snapshots += sum(1 for answer in answers if answer["type"] == "snapshot")
        used = settled_transactions(db_dsn) - before
    # A LISTEN, its floor and a snapshot for each of the 64 events (~200), not
    # for each of the 320 subscribes (~1,100 before).
    assert snapshots == 320
    assert used < 400, f"{used} transactions for 320 snapshots"


def test_cycling_real_events_on_a_busy_daemon_is_answered_from_memory(
        db_dsn: str, tmp_path: Path, party: Party) -> None:
    """The same loop while another event is voted on: every vote read made every kept
    read stale, so each subscribe after the first second cost a replay or a snapshot.
    Kept reads now follow their event's changes while its channel is LISTENed."""
    events = [party.event(f"E{n}") for n in range(32)]
    busy, track = party.event("Busy"), party.track()
    with Daemon(db_dsn, tmp_path) as daemon, connect(daemon.ws_url, open_timeout=30) as fan:
        fan.send(json.dumps({"event": busy}))  # the busy event is listened, its votes read
        wait_for(lambda: f"event_{busy}" in daemon.health()[1]["channels"], 30, "LISTEN")
        before = settled_transactions(db_dsn)
        snapshots = 0
        for round_ in range(10):
            answers = subscribed(daemon.ws_url, events)
            snapshots += sum(1 for answer in answers if answer["type"] == "snapshot")
            for user in range(3):
                party.vote(busy, track, user_id=10 * round_ + user)  # 2 transactions each
            for _ in range(3):
                fan.recv(timeout=30)  # read by the listener before the next round
        used = settled_transactions(db_dsn) - before
        log = daemon.log()
    assert snapshots == 320
    # ~100 for the first round (a LISTEN, its floor and a snapshot per event), 60 for the
    # votes, their reads; ~500 when each round after the first read every event again.
    # (~180 here.) CI once counted 573 while another job loaded the same server: the
    # daemon's warnings (a reconnect, a slow statement) say why, next time.
    warnings = [line for line in log.splitlines() if "warn" in line.lower()
                or "reconnect" in line.lower() or "lost" in line.lower()]
    assert used < 300, f"{used} transactions for 320 snapshots; the daemon said:\n" + \
        "\n".join(warnings[-30:])
