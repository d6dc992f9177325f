"""twistd partysense-live --source wal, as clients see it.

Two daemons on one WAL-mode database (one relays the slot, the other waits as
a standby), writers voting, changing, moving and deleting votes concurrently
with no trigger on their transactions. What the clients get must be what
they get in the listen mode: seed frames byte for byte the log's payloads, a
v2 snapshot + changes equal to SQL's GROUP BY, also after resuming by cursor
on the other daemon, an SSE stream resumed by Last-Event-ID on the other
daemon without a change missing or doubled, and the same after the relaying
daemon is killed with SIGKILL and comes back.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from harness.faults import committed
from partysense.db import changelog
from tests.sse import Stream
from tests.support import Party
from tests.test_exact_tallies import Watcher
from tests.test_walrelay import Writers

pytestmark = pytest.mark.daemon


def relayed_everything(dsn: str) -> bool:
    """The log holds every committed vote change: its tallies are event_vote's."""
    with Party(dsn) as party:
        return bool(party.query("""
            SELECT NOT EXISTS (
                SELECT event_id, track_id, count(*) FILTER (WHERE is_positive),
                       count(*) FILTER (WHERE NOT is_positive) FROM event_vote GROUP BY 1, 2
                EXCEPT SELECT event_id, track_id, up, down FROM partysense_tally
                WHERE up <> 0 OR down <> 0)
            AND NOT EXISTS (
                SELECT event_id, track_id, up, down FROM partysense_tally
                WHERE up <> 0 OR down <> 0
                EXCEPT SELECT event_id, track_id, count(*) FILTER (WHERE is_positive),
                       count(*) FILTER (WHERE NOT is_positive) FROM event_vote GROUP BY 1, 2)
            """)[0][0])


@contextmanager
def two_wal_daemons(dsn: str, tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    """Two --source wal daemons on ``dsn``: one relays the slot, the other waits,
    and both say so."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with Daemon(dsn, tmp_path / "a", "--source", "wal") as a, \
            Daemon(dsn, tmp_path / "b", "--source", "wal") as b:
        wait_for(lambda: sorted(d.health()[1]["relay"]["state"] for d in (a, b))
                 == ["relaying", "standby"], 20, "one relay and one standby")
        yield a, b


def payloads(dsn: str, event_id: int) -> list[bytes]:
    """The log's changes of the event, as the daemon's reads of the log build them."""
    with Party(dsn) as party:
        return [text.encode() for (text,) in party.query(
            changelog.REPLAY_QUERY, changelog.replay_params(0, [event_id], 1_000_000))]


def test_two_wal_daemons_serve_seed_v2_and_sse_exactly(wal_dsn: str, tmp_path: Path) -> None:
    with Party(wal_dsn) as party:
        event = party.event("WAL party")
        tracks = [party.track(f"Song {n}", f"Artist {n}") for n in range(3)]
        party.vote(event, tracks[0], up=False)  # before anyone: in the snapshot
    with two_wal_daemons(wal_dsn, tmp_path) as (a, b):
        wait_for(lambda: all(d.health()[1]["relay"]["slot_lag_bytes"] is not None
                             for d in (a, b)), 20, "the slot's lag")
        metrics = {d: metric_lines(d) for d in (a, b)}
        assert sorted(m["partysense_wal_relay_active"] for m in metrics.values()) == [0, 1]
        assert all(m["partysense_wal_slot_lag_bytes"] >= 0 for m in metrics.values())
        seed = connect(a.ws_url, open_timeout=10)
        seed.send(json.dumps({"event": event}))
        wait_for(lambda: a.health()[1]["channels"], 10, "the seed subscription")
        floor = committed(wal_dsn, event)[-1][0] if committed(wal_dsn, event) else 0
        watcher = Watcher(a, event)
        stream = Stream(b.port, f"/events/{event}/stream")
        start = int(wait_for(lambda: stream.ids, 10, "the stream's first id")[0])
        writers = Writers(wal_dsn, [event], tracks, 4, interval=0.005)  # a replay < 10,000
        try:
            wait_for(lambda: len(stream.changes()) >= 30, 20, "changes on the stream")
            watcher.disconnect()
            stream.close()
            got = stream.changes()
            wait_for(lambda: len(committed(wal_dsn, event)) > len(got) + 60, 20,
                     "changes while both clients are away")
            watcher._daemon = b  # resume by cursor on the other daemon
            watcher.connect()
            again = Stream(a.port, f"/events/{event}/stream",
                           {"Last-Event-ID": str(got[-1]["seq"])})
            wait_for(lambda: len(again.changes()) >= 30, 20, "the replay and live changes")
        finally:
            writers.finish()
        assert_exact(wal_dsn, watcher, event)
        log = committed(wal_dsn, event)
        last = log[-1][0]
        wait_for(lambda: again.changes() and again.changes()[-1]["seq"] == last, 15,
                 "the stream's last change")
        assert [c["seq"] for c in got + again.changes()] == [s for s, _, _ in log if s > start]
        frames = [seed.recv(timeout=10).encode() for _ in [s for s, _, _ in log if s > floor]]
        assert frames == [p for p, (s, _, _) in zip(payloads(wal_dsn, event), log,
                                                    strict=True) if s > floor]
        seed.close()
        watcher.disconnect()
        again.close()
        for daemon in (a, b):
            assert "Traceback" not in daemon.log()


def metric_lines(daemon: Daemon) -> dict[str, float]:
    """The daemon's unlabelled /metrics values by name."""
    with urllib.request.urlopen(daemon.admin_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {name: float(value) for name, value in
            (line.split(" ", 1) for line in text.splitlines()
             if line and not line.startswith("#") and "{" not in line)}


def votes(dsn: str) -> int:
    with Party(dsn) as party:
        return int(party.query("SELECT count(*) FROM event_vote")[0][0])


def assert_exact(dsn: str, watcher: Watcher, event: int) -> None:
    """Once the relay has logged every vote, the v2 client's tallies are SQL's."""
    wait_for(lambda: relayed_everything(dsn), 30, "the relay to catch up")
    with Party(dsn) as party:
        expected = party.tallies(event)
    wait_for(lambda: watcher.tallies() == expected, 15,
             f"v2 tallies {watcher.tallies()} to equal SQL {expected}")
    assert watcher.problems == []


def test_the_relaying_daemon_killed_and_back_loses_and_doubles_nothing(
        wal_dsn: str, tmp_path: Path) -> None:
    with Party(wal_dsn) as party:
        event = party.event("Killed")
        tracks = [party.track(f"Song {n}") for n in range(3)]
    daemon = Daemon(wal_dsn, tmp_path, "--source", "wal").start()
    try:
        watcher = Watcher(daemon, event)
        writers = Writers(wal_dsn, [event], tracks, 3, interval=0.005)
        try:
            wait_for(lambda: len(committed(wal_dsn, event)) > 50, 20, "changes logged")
            watcher.disconnect()
            daemon.process.send_signal(signal.SIGKILL)
            daemon.process.wait(10)
            down_at = votes(wal_dsn)
            wait_for(lambda: votes(wal_dsn) > down_at + 50, 10, "votes while it is down")
            daemon.start()  # the slot kept what was not written: the relay goes on
            watcher.connect()
        finally:
            writers.finish()
        assert_exact(wal_dsn, watcher, event)
        watcher.disconnect()
    finally:
        daemon.stop()
