"""bench.notify_ceiling's WAL mode for a second, so that it cannot rot.

Speed is not asserted (docs/scaling.md has the figures); exactness is: the WAL
readers decode every vote pgbench committed, each once, on every stream, and
the daemon's relay logs each once.
"""

from __future__ import annotations

import pytest

from bench import notify_ceiling
from tests.support import require_logical_decoding

pytestmark = pytest.mark.daemon


def test_the_wal_readers_decode_every_committed_vote_once(admin_dsn: str) -> None:
    require_logical_decoding(admin_dsn)
    rows, report = notify_ceiling.main([
        "--dsn", admin_dsn, "--seconds", "1", "--clients", "2", "--scripts", "vote-wal",
        "--synchronous", "on", "--wal-reader", "stream", "--wal-streams", "2"])
    [(name, synchronous, [rate])] = rows
    assert (name, synchronous) == ("vote-wal", True) and rate > 0
    assert report["votes_committed"] > 0
    assert len(report["streams"]) == 2
    for stream in report["streams"]:
        # One vote, one transaction, one row change: all of them, none twice.
        assert stream["transactions"] == stream["changes"] == report["votes_committed"]
        assert stream["lost"] == []


def test_the_relaying_daemon_logs_every_committed_vote_once(admin_dsn: str) -> None:
    require_logical_decoding(admin_dsn)
    rows, report = notify_ceiling.main([
        "--dsn", admin_dsn, "--seconds", "1", "--clients", "2", "--scripts", "vote-wal",
        "--synchronous", "on"])
    assert rows[0][2][0] > 0
    assert report["changes_logged"] == report["votes_committed"] > 0
    assert report["daemon_cpu_seconds"] > 0
