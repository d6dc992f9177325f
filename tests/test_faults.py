"""The database goes away in every way it can; no vote is lost, duplicated or reordered.

Each test runs a real twistd daemon, seed WebSocket clients (one on an
event, one on the firehose), a voter committing all the while, and a vote
held in an open transaction across the outage (so commits happen out of id
order). After recovery, what every client received must equal, exactly and
in order, the change log of what the database committed, and no client may
have been disconnected.

The scenarios themselves are in harness/scenarios.py: they return how long
recovery took, and bench/recovery.py runs them again to report the figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.faults import SilentProxy, dedicated_postgres
from harness.scenarios import (
    Scene,
    backend_killed,
    backend_killed_and_locked_out,
    down_at_start,
    postgres_restarted,
    silent_connection,
)

pytestmark = pytest.mark.daemon


@pytest.fixture
def scenes() -> Iterator[list[Scene]]:
    made: list[Scene] = []
    yield made
    for scene in made:
        scene.close()


# -- the tests ----------------------------------------------------------------------


def test_backend_killed(db_dsn: str, tmp_path: Path, scenes: list[Scene]) -> None:
    scenes.append(scene := Scene(db_dsn, db_dsn, tmp_path))
    print(backend_killed(scene).line())


def test_backend_killed_and_reconnects_refused(db_dsn: str, tmp_path: Path,
                                               scenes: list[Scene]) -> None:
    scenes.append(scene := Scene(db_dsn, db_dsn, tmp_path))
    print(backend_killed_and_locked_out(scene).line())


# Through the proxy the daemon connects to another port, which a ~/.pgpass
# entry for the real server would not match: embedded (trust) only.
@pytest.mark.embedded_only
def test_silent_tcp_connection(db_dsn: str, tmp_path: Path, scenes: list[Scene]) -> None:
    proxy = SilentProxy(db_dsn)
    try:
        scenes.append(scene := Scene(proxy.dsn(db_dsn), db_dsn, tmp_path))
        print(silent_connection(scene, proxy).line())
    finally:
        for scene in scenes:
            scene.close()
        scenes.clear()
        proxy.close()


@pytest.mark.embedded_only
def test_postgres_restarted(tmp_path: Path, scenes: list[Scene]) -> None:
    with dedicated_postgres(tmp_path / "pg") as server:
        dsn = server.database()
        scenes.append(scene := Scene(dsn, dsn, tmp_path))
        print(postgres_restarted(scene, server).line())
        scene.close()
        scenes.clear()


@pytest.mark.embedded_only
def test_postgres_down_at_start(tmp_path: Path) -> None:
    with dedicated_postgres(tmp_path / "pg") as server:
        print(down_at_start(server, server.database(), tmp_path).line())
