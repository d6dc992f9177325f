"""``partysense-db install`` as a sysadmin runs it: the console script, a real database."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from psycopg2.extensions import make_dsn

from partysense.db import sqlfiles
from tests.support import Party, listen_mode_only

pytestmark = pytest.mark.daemon

SECRET = "hunter2-do-not-print"
OUR_TRIGGERS = {"partysense_vote_insert", "partysense_vote_update", "partysense_vote_delete",
                "partysense_vote_truncate"}


def partysense_db(*args: str, env_dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    script = shutil.which("partysense-db", path=os.path.dirname(sys.executable))
    assert script, "the partysense-db console script is not installed beside this Python"
    env = dict(os.environ)
    env.pop("PARTYSENSE_DSN", None)
    if env_dsn is not None:
        env["PARTYSENSE_DSN"] = env_dsn
    return subprocess.run([script, *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=60)


@contextmanager
def refused_port() -> Iterator[int]:
    """A port that refuses connections for as long as we hold it (bound, not listening).

    A port that is merely free now may be taken by another test's server.
    """
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def triggers(dsn: str) -> set[str]:
    with Party(dsn) as party:
        return {row[0] for row in party.query(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'event_vote'::regclass "
            "AND NOT tgisinternal")}


def changes_for_one_vote(dsn: str) -> list[tuple]:
    with Party(dsn) as party:
        party.vote(party.event(), party.track(), up=False)
        return party.query("SELECT op, up, prev_up FROM partysense_change ORDER BY seq")


def test_install_on_an_empty_database_twice_then_without_demo_schema(
        empty_db_dsn: str) -> None:
    first = partysense_db("install", "--dsn", empty_db_dsn, "--demo-schema")
    assert first.returncode == 0, first.stderr
    assert "demo_schema.sql" in first.stdout and "install.sql" in first.stdout
    assert triggers(empty_db_dsn) == OUR_TRIGGERS

    again = partysense_db("install", "--dsn", empty_db_dsn, "--demo-schema")
    assert again.returncode == 0, again.stderr
    upgrade = partysense_db("install", "--dsn", empty_db_dsn)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "demo_schema.sql" not in upgrade.stdout
    assert triggers(empty_db_dsn) == OUR_TRIGGERS
    # Installed three times, a vote is still recorded exactly once per change.
    assert changes_for_one_vote(empty_db_dsn) == [("insert", True, None),
                                                  ("update", False, True)]


def test_install_without_the_tables_names_what_is_missing(empty_db_dsn: str) -> None:
    result = partysense_db("install", "--dsn", empty_db_dsn)
    assert result.returncode == 1
    assert "event_vote" in result.stderr and "install failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_dsn_from_the_environment(empty_db_dsn: str) -> None:
    result = partysense_db("install", "--demo-schema", env_dsn=empty_db_dsn)
    assert result.returncode == 0, result.stderr
    assert triggers(empty_db_dsn) == OUR_TRIGGERS


def test_no_dsn_at_all() -> None:
    result = partysense_db("install")
    assert result.returncode == 2
    assert "--dsn" in result.stderr and "PARTYSENSE_DSN" in result.stderr


@pytest.mark.parametrize("dsn", [
    f"host=127.0.0.1 port={{port}} dbname=x user=y password={SECRET}",
    f"postgresql://y:{SECRET}@127.0.0.1:{{port}}/x",
])
def test_unreachable_database_is_a_clear_error_without_the_password(dsn: str) -> None:
    with refused_port() as port:
        dsn = dsn.format(port=port)
        results = [partysense_db("install", "--dsn", dsn), partysense_db("install", env_dsn=dsn)]
    for result in results:
        assert result.returncode == 1
        assert "install failed" in result.stderr and "Connection refused" in result.stderr
        assert "127.0.0.1" in result.stderr
        assert SECRET not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("dsn", [
    f"host=127.0.0.1 password='{SECRET}",          # unterminated quote
    f"postgresql://y:{SECRET}@[::1/x",             # libpq echoes a bad URI whole
    f"postgresql://y:{SECRET}@host/x?bogus=1",
])
def test_unparseable_dsn_is_a_usage_error_without_the_password(dsn: str) -> None:
    result = partysense_db("install", "--dsn", dsn)
    assert result.returncode == 2
    assert "--dsn" in result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.embedded_only  # its trust authentication accepts a made-up password
def test_password_in_a_working_dsn_is_not_printed(empty_db_dsn: str) -> None:
    with_password = make_dsn(empty_db_dsn, password=SECRET)  # trust auth ignores it
    result = partysense_db("install", "--dsn", with_password, "--demo-schema")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "password=***" in result.stdout


@listen_mode_only("it installs the listen mode's triggers under votes")
def test_install_is_safe_while_votes_flow(db_dsn: str) -> None:
    """An upgrade on a live database: votes before and after are all recorded."""
    with Party(db_dsn) as party:
        event_id, track_id = party.event(), party.track()
        party.vote(event_id, track_id)
        result = partysense_db("install", "--dsn", db_dsn)
        assert result.returncode == 0, result.stderr
        party.vote(event_id, track_id)
        assert party.query("SELECT count(*) FROM partysense_change") == [(2,)]


def test_upgrade_from_the_first_release(empty_db_dsn: str) -> None:
    """A database installed by an older partysense-db, with votes logged, upgrades in place."""
    old_install = Path(__file__).parent / "data" / "install-0.1.0-a0fb34b.sql"
    with Party(empty_db_dsn) as party:
        party.query(sqlfiles.read_sql(sqlfiles.DEMO_SCHEMA_SCRIPT))
        party.query(old_install.read_text("utf-8"))
        event_id, track_id = party.event(), party.track()
        party.vote(event_id, track_id, up=False)
        upgrade = partysense_db("install", "--dsn", empty_db_dsn)
        assert upgrade.returncode == 0, upgrade.stderr
        party.vote(event_id, track_id, up=False)
        ops = party.query("SELECT op, up, prev_up FROM partysense_change ORDER BY seq")
        assert ops == [("insert", True, None), ("update", False, True)] * 2
    assert triggers(empty_db_dsn) == OUR_TRIGGERS
