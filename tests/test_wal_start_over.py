"""twistd partysense-live --source wal: a slot made again, as connected clients see it.

The relay's slot is dropped (as ``max_slot_wal_keep_size`` or a DBA would),
votes are committed while no slot exists (they will never be streamed), and
the relay makes a new slot: the tallies are recounted, the log starts over.
Clients that stay connected across it, on the relaying daemon and on the
standby, must end with SQL's tallies: each v2 subscription gets a fresh
snapshot with ``"reset": true``; an SSE stream ends, and resuming with its
Last-Event-ID gets ``event: reset`` (docs/exactness.md §8).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from tests.sse import Stream
from tests.support import Party, nonzero, tally
from tests.test_wal_daemon import relayed_everything, two_wal_daemons

pytestmark = pytest.mark.daemon

SLOT = "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'partysense_relay_%'"


class V2Client:
    """A v2 subscription in a thread, taking every snapshot it is sent."""

    def __init__(self, daemon: Daemon, event_id: int) -> None:
        self._lock = threading.Lock()
        self.counts: dict[int, list[int]] = {}
        self.cursor = 0
        self.snapshots = 0
        self.resets = 0
        self.problems: list[str] = []
        self._socket = connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10)
        self._socket.send(json.dumps({"type": "subscribe", "event": event_id, "id": 1}))
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        try:
            for text in self._socket:
                self._take(json.loads(text))
        except ConnectionClosed:
            pass

    def _take(self, message: dict[str, Any]) -> None:
        with self._lock:
            if message["type"] == "snapshot":
                self.counts = {t["tid"]: [t["up"], t["down"]] for t in message["tracks"]}
                self.cursor = message["cursor"]
                self.snapshots += 1
                self.resets += bool(message.get("reset"))
            elif message["type"] == "change" and message["seq"] > self.cursor:
                self.cursor = message["seq"]
                tally(self.counts, message)
            elif message["type"] != "change":
                self.problems.append(f"unexpected {message}")

    def tallies(self) -> dict[int, tuple[int, int]]:
        with self._lock:
            return nonzero(self.counts)

    def close(self) -> None:
        self._socket.close()
        self._thread.join(10)


def drop_the_slot(dsn: str) -> str:
    """The relay's slot gone, its walsender ended first (a slot in use cannot be dropped)."""
    with Party(dsn, wait_relayed=False) as party:
        slot = str(party.query(SLOT)[0][0])

        def dropped() -> bool:
            party.query("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                        "WHERE slot_name = %s AND active", (slot,))
            party.query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s AND NOT active", (slot,))
            return not party.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                                   (slot,))

        wait_for(dropped, 20, "the relay's slot dropped")
    return slot


def test_clients_connected_across_a_slot_made_again_end_with_sqls_tallies(
        wal_dsn: str, tmp_path: Path) -> None:
    with Party(wal_dsn) as party:
        event = party.event("Start over")
        tracks = [party.track(f"Song {n}", f"Artist {n}") for n in range(3)]
        party.vote(event, tracks[0])
    with two_wal_daemons(wal_dsn, tmp_path) as (a, b):
        clients = [V2Client(a, event), V2Client(b, event)]
        stream = Stream(b.port, f"/events/{event}/stream")
        wait_for(lambda: stream.ids, 10, "the stream's first id")  # its start, before the votes
        for client in clients:
            wait_for(lambda c=client: c.snapshots, 10, "the v2 snapshot")
        with Party(wal_dsn) as party:
            for track in tracks:
                party.vote(event, track, up=False)
        expected_before = {tracks[0]: (1, 1), tracks[1]: (0, 1), tracks[2]: (0, 1)}
        for client in clients:
            wait_for(lambda c=client: c.tallies() == expected_before, 15, "the first votes")
        # Each vote is an insert and an update (Django's get_or_create, then save).
        wait_for(lambda: len(stream.changes()) == 2 * len(tracks), 15,
                 "the first votes on the stream")
        last_id = stream.ids[-1]

        drop_the_slot(wal_dsn)
        with Party(wal_dsn, wait_relayed=False) as party:  # never streamed: no slot
            for track in tracks:
                party.vote(event, track, up=True)
        wait_for(lambda: relayed_everything(wal_dsn), 30, "a new slot, tallies recounted")
        with Party(wal_dsn) as party:
            party.vote(event, tracks[1], up=True)  # after the new slot: streamed
            expected = party.tallies(event)
        for client in clients:
            wait_for(lambda c=client: c.tallies() == expected, 20,
                     f"v2 tallies equal to SQL's {expected} (have {client.tallies()}, "
                     f"{client.resets} resets)")
            assert client.resets >= 1 and client.problems == []
        wait_for(lambda: stream.ended, 20, "the SSE stream ended by the start over")
        again = Stream(b.port, f"/events/{event}/stream", {"Last-Event-ID": last_id})
        reset = wait_for(lambda: [e for e in again.events if e.get("event") == "reset"], 15,
                         "event: reset on the resumed stream")
        snapshot = json.loads(reset[0]["data"])
        assert {t["tid"]: (t["up"], t["down"]) for t in snapshot["tracks"]
                if t["up"] or t["down"]} == expected
        for client in clients:
            client.close()
        stream.close()
        again.close()
        for daemon in (a, b):
            log = daemon.log()
            assert "Traceback" not in log
            assert "started over" in log
