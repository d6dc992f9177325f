"""A tiny connect storm (bench/storm.py), so that the benchmark cannot rot.

No speed is asserted (the bench measures it): every client is served, and
what the bench reports adds up.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import storm

pytestmark = [pytest.mark.daemon,
              pytest.mark.skipif(shutil.which("node") is None,
                                 reason="the load generator needs Node.js")]


def test_a_small_storm_serves_every_client(admin_dsn: str, tmp_path: Path) -> None:
    output = tmp_path / "storm.json"
    storm.main(["--dsn", admin_dsn, "--clients", "40", "--events", "2", "--v2", "0.25",
                "--workers", "1", "--pre", "0.2", "--tail", "0.5", "--timeout", "60",
                "--json", str(output)])
    [result] = json.loads(output.read_text())
    assert (result["connected"], result["failed"], result["dropped"]) == (40, 0, 0)
    assert (result["ready_seed"], result["ready_v2"]) == (30, 10)
    assert 0 < result["all_open_s"] <= result["settle_s"]
    # CPU time is counted in clock ticks (10 ms): a 40-client storm may read
    # 0, so only its sign is the bench's promise (the figure is the bench's).
    assert result["daemon_cpu_s"] >= 0 and result["daemon_exited"] is None
