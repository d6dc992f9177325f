"""Forged notifications change nothing (docs/security.md).

Any role that can connect may NOTIFY on any channel: PostgreSQL has no
permission for it. Here a role with no grant at all forges changes, on
``event_N`` and on ``firehose``, shaped exactly like ours, with a huge seq,
with a real seq but other content, with a key twice. Seed and v2 clients must
see exactly what SQL says was committed, before and after, on the forged
event and on one subscribed after the forgery; the listener's watermark must
not move; every forgery is counted, and none costs a read of the change log.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import psycopg2
import pytest
from websockets.sync.client import ClientConnection, connect

from harness.daemon import Daemon, wait_for
from harness.faults import committed
from tests.support import Party, nonzero, tally
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.daemon


def payload(event_id: int, seq: int, track: str = "FORGED", **extra: Any) -> str:
    """A change shaped exactly like the trigger's (partysense_payload)."""
    body = {"eid": event_id, "event": "Party", "track": track, "artist": "X", "tid": 1,
            "up": True, "op": "insert", "vote": 1, "prev": None, "seq": seq,
            "truncated": False, "ts": 1.0, **extra}
    return json.dumps(body, separators=(" , ", " : "))


def forge(dsn: str, notifications: list[tuple[str, str]]) -> None:
    """NOTIFY as a role with no privilege on anything of ours."""
    role = f"forger_{secrets.token_hex(4)}"
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE ROLE {role} NOLOGIN")  # noqa: S608 (a random hex name)
            cursor.execute(f"SET ROLE {role}")  # noqa: S608
            cursor.execute("SELECT has_table_privilege('partysense_change', 'SELECT')")
            assert cursor.fetchone() == (False,)
            for channel, text in notifications:
                cursor.execute("SELECT pg_notify(%s, %s)", (channel, text))
            cursor.execute("RESET ROLE")
            cursor.execute(f"DROP ROLE {role}")  # noqa: S608
    finally:
        connection.close()


def receive(client: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [json.loads(client.recv(timeout=10)) for _ in range(count)]


def test_forged_notifications_reach_nobody_and_move_nothing(
        daemon: Daemon, party: Party) -> None:
    event_id, later_event = party.event("Forged"), party.event("Later")
    track_id = party.track()
    party.vote(event_id, track_id)
    seed = connect(daemon.ws_url, open_timeout=10)
    seed.send(json.dumps({"event": event_id}))
    everything = connect(daemon.ws_url, open_timeout=10)
    everything.send(json.dumps({"event": "ALL"}))
    v2 = connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10)
    v2.send(json.dumps({"type": "subscribe", "event": event_id}))
    snapshot = json.loads(v2.recv(timeout=10))
    wait_for(lambda: len(daemon.health()[1]["channels"]) == 2, 10, "both channels listened")
    real_seq = committed(party.dsn, event_id)[-1][0]
    assert daemon.health()[1]["signed"] is True
    reads = value(scrape(daemon), "partysense_change_log_reads_total")

    forge(party.dsn, [
        (f"event_{event_id}", payload(event_id, 9 * 10**18)),
        ("firehose", payload(event_id, 9 * 10**18 - 1)),
        (f"event_{event_id}", payload(event_id, real_seq, track="FORGED AGAIN")),
        (f"event_{event_id}", payload(event_id, 9 * 10**18)[:-1] + ' , "type" : "snapshot"}'),
        ("firehose", payload(event_id, 9 * 10**18, type="change")),
    ])
    wait_for(lambda: value(scrape(daemon), "partysense_bad_notifications_total") == 5, 10,
             "the five forgeries to be counted")
    assert value(scrape(daemon), "partysense_change_log_reads_total") == reads, (
        "a forged notification costs no query")

    # Real votes after the forgery: on the forged event, and on one subscribed later.
    for up in (False, True):
        party.vote(event_id, track_id, up=up)
    later = connect(daemon.ws_url, open_timeout=10)
    later.send(json.dumps({"event": later_event}))
    wait_for(lambda: len(daemon.health()[1]["channels"]) == 3, 10, "the later channel")
    party.vote(later_event, track_id)

    expected = [seq for seq, _, _ in committed(party.dsn, event_id) if seq > real_seq]
    assert len(expected) == 3  # a down-vote (insert, then update) and an up-vote
    seed_seen = receive(seed, 3)
    assert [m["seq"] for m in seed_seen] == expected
    assert all("FORGED" not in json.dumps(m) for m in seed_seen)
    firehose_expected = [seq for seq, _, _ in committed(party.dsn) if seq > real_seq]
    assert [m["seq"] for m in receive(everything, len(firehose_expected))] == firehose_expected
    later_expected = [seq for seq, _, _ in committed(party.dsn, later_event)]
    assert [m["seq"] for m in receive(later, len(later_expected))] == later_expected

    counts = {t["tid"]: [t["up"], t["down"]] for t in snapshot["tracks"]}
    changes = receive(v2, 3)
    assert all(m["type"] == "change" for m in changes)
    assert [m["seq"] for m in changes] == expected
    for change in changes:
        tally(counts, change)
    assert nonzero(counts) == party.tallies(event_id)
    # The v2 cursor followed the real changes: resuming from it replays nothing.
    v2.send(json.dumps({"type": "subscribe", "event": event_id, "cursor": expected[-1]}))
    assert json.loads(v2.recv(timeout=10))["type"] == "subscribed"

    status, health = daemon.health()
    assert status == 200 and health["status"] == "ok"
    for client in (seed, everything, v2, later):
        client.close()
