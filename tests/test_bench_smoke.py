"""A few seconds of the benchmark, so that it cannot rot.

Speed is not asserted here (bench/ measures it); exactness is: every frame
the benchmark expects arrives once, through partysense-live, through the
asyncio reference (bench/asyncio_bridge.py), through partysense-live with
``--source wal`` where the PostgreSQL has logical decoding (the embedded one
has) and, when the Node service is on the machine, through it too.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench import run, services
from partysense.db import walsetup

pytestmark = [pytest.mark.daemon,
              pytest.mark.skipif(shutil.which("node") is None,
                                 reason="the load generator needs Node.js")]


def test_smoke_run_delivers_every_frame_once(admin_dsn: str, tmp_path: Path) -> None:
    targets = ["asyncio", *(["node"] if services.node_available() else []), "partysense"]
    if os.environ.get("PARTYSENSE_REQUIRE_WAL") or not walsetup.read_settings(admin_dsn).problems():
        targets.append("partysense-wal")  # the same daemon, --source wal
    output = tmp_path / "smoke.json"
    run.main(["--scenario", "smoke", "--dsn", admin_dsn, "--targets", ",".join(targets),
              "--json", str(output)])
    [results] = json.loads(output.read_text())
    # The reference's one LISTEN connection serves every client (Node opens one each).
    assert results["asyncio"].get("postgres_backends_peak") == 1, results["asyncio"]
    for target in targets:
        result = results[target]
        assert "error" not in result, result
        assert result["clients_connected"] == run.SCENARIOS["smoke"].clients
        assert result["votes_sent"] == 100
        assert result["frames_expected"] > 0
        assert result["frames_delivered"] == result["frames_expected"]
        assert (result["frames_lost"], result["frames_duplicated"]) == (0, 0)
        assert result["frames_unexpected"] == 0
        assert result["latency_p50_s"] <= result["latency_max_s"]


def test_sse_smoke_run_delivers_every_frame_once(admin_dsn: str, tmp_path: Path) -> None:
    from bench import sse

    output = tmp_path / "sse.json"
    sse.main(["--clients", "6", "--rate", "20", "--duration", "2", "--dsn", admin_dsn,
              "--json", str(output)])
    results = json.loads(output.read_text())
    for side in sse.SIDES:
        result = results[side]
        assert "error" not in result, result
        assert result["clients_connected"] == 6
        assert result["frames_expected"] > 0
        assert result["frames_delivered"] == result["frames_expected"]
        assert (result["frames_lost"], result["frames_duplicated"]) == (0, 0)
        assert result["frames_unexpected"] == 0
