"""Clients that stop reading: bounded memory, nobody else delayed, v2 resumes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psutil
import pytest
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from tests.rawws import open_raw, read_frame, send_text
from tests.support import Party, listen_mode_only

pytestmark = pytest.mark.daemon

VOTES = 8000
STALLED = 10
QUEUE_LIMIT = 256 * 1024


def collect(client, count: int, into: list) -> None:
    while len(into) < count:
        into.append(json.loads(client.recv(timeout=60)))


@listen_mode_only("its v2 client resumes from the cursor of an empty log (0), which the "
                  "WAL mode's first slot takes for too old: a fresh snapshot, exact, not a "
                  "replay (docs/exactness.md §8)")
def test_stalled_clients_are_closed_and_cost_bounded_memory(db_dsn: str, tmp_path: Path,
                                                            party: Party) -> None:
    event_id = party.event("Slow")
    # Long names make each frame about 800 bytes: 8000 of them are 6 MB a client.
    track = party.track("n" * 256, "a" * 256)
    with Daemon(db_dsn, tmp_path, "--max-queue-bytes", str(QUEUE_LIMIT)) as daemon:
        fast_v2 = connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10)
        fast_v2.send(json.dumps({"type": "subscribe", "event": event_id}))
        assert json.loads(fast_v2.recv(timeout=10))["type"] == "snapshot"
        fast_seed = connect(daemon.ws_url, open_timeout=10)
        fast_seed.send(json.dumps({"event": event_id}))

        stalled = []
        for _ in range(STALLED - 1):
            sock = open_raw(daemon.port, rcvbuf=4096)
            send_text(sock, json.dumps({"event": event_id}))
            stalled.append(sock)
        stalled_v2 = open_raw(daemon.port, subprotocol="partysense.v2", rcvbuf=4096)
        send_text(stalled_v2, json.dumps({"type": "subscribe", "event": event_id}))
        opcode, body = read_frame(stalled_v2)
        snapshot = json.loads(body)
        assert opcode == 1 and snapshot["type"] == "snapshot"
        stalled.append(stalled_v2)
        wait_for(lambda: daemon.health()[1]["clients"] == STALLED + 2, 10, "every client")

        process = psutil.Process(daemon.process.pid)
        rss_before = process.memory_info().rss
        peak = [rss_before]
        received_v2: list = []
        received_seed: list = []
        readers = [
            threading.Thread(target=collect, args=(fast_v2, VOTES, received_v2)),
            threading.Thread(target=collect, args=(fast_seed, VOTES, received_seed)),
        ]
        for reader in readers:
            reader.start()
        party.query("INSERT INTO event_vote (event_id, track_id) "
                    "SELECT %s, %s FROM generate_series(1, %s)", (event_id, track, VOTES))

        def all_delivered() -> bool:
            peak[0] = max(peak[0], process.memory_info().rss)
            return len(received_v2) >= VOTES and len(received_seed) >= VOTES
        wait_for(all_delivered, 90, "the fast clients to receive every vote")
        for reader in readers:
            reader.join(5)

        # Fast clients got everything, in commit order, once.
        seqs = [m["seq"] for m in received_v2]
        assert seqs == sorted(set(seqs)) and len(seqs) == VOTES
        assert [m["seq"] for m in received_seed] == seqs
        # The stalled ones were closed, and memory stayed bounded: unbounded
        # queues would hold 10 x 6 MB.
        wait_for(lambda: daemon.health()[1]["clients"] == 2, 30, "the stalled clients to go")
        growth = (peak[0] - rss_before) / 2**20
        assert growth < 25, f"daemon grew by {growth:.1f} MiB with {STALLED} stalled clients"
        assert "too_slow, code 4008" in daemon.log()

        # The stalled v2 client comes back and resumes without a loss.
        with connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as again:
            again.send(json.dumps({"type": "subscribe", "event": event_id,
                                   "cursor": snapshot["cursor"]}))
            assert json.loads(again.recv(timeout=10))["type"] == "subscribed"
            replayed = [json.loads(again.recv(timeout=30)) for _ in range(VOTES)]
        assert [m["seq"] for m in replayed] == seqs
        for sock in stalled:
            sock.close()
        fast_v2.close()
        fast_seed.close()
