"""``partysense-db install --source wal``: what it creates, what it refuses, and the
way back to the listen mode (sql/wal.sql, partysense/db/walsetup.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.faults import DedicatedPostgres
from partysense.db.walsetup import Settings
from tests.support import Party, require_logical_decoding
from tests.test_dbcli import OUR_TRIGGERS, partysense_db, triggers


def wal_state(dsn: str) -> tuple[list[str], str]:
    """The publications' tables, and event_vote's replica identity."""
    with Party(dsn) as party:
        tables = [row[0] for row in party.query(
            "SELECT tablename FROM pg_publication_tables WHERE pubname LIKE 'partysense%' "
            "ORDER BY 1")]
        identity = party.query(
            "SELECT relreplident FROM pg_class WHERE oid = 'event_vote'::regclass")[0][0]
    return tables, identity


@pytest.mark.daemon
def test_wal_mode_drops_the_triggers_and_publishes_event_vote_and_back(db_dsn: str) -> None:
    require_logical_decoding(db_dsn)
    result = partysense_db("install", "--dsn", db_dsn, "--source", "wal")
    assert result.returncode == 0, result.stderr
    assert "install.sql, wal.sql" in result.stdout
    assert "REPLICATION" in result.stdout  # the note on the daemon's role
    assert triggers(db_dsn) == {"partysense_vote_truncate"}  # a TRUNCATE copies its votes
    assert wal_state(db_dsn) == (["event_vote", "partysense_truncated"], "f")
    again = partysense_db("install", "--dsn", db_dsn, "--source", "wal")
    assert again.returncode == 0, again.stderr  # idempotent
    with Party(db_dsn) as party:
        party.vote(party.event(), party.track())
        # No trigger: the vote's transaction wrote nothing to the change log.
        assert party.query("SELECT count(*) FROM partysense_change") == [(0,)]
    with Party(db_dsn) as party:  # the slot a relay would have made, not streamed
        party.query("SELECT pg_create_logical_replication_slot('partysense_relay_' || oid, "
                    "'pgoutput') FROM pg_database WHERE datname = current_database()")
    back = partysense_db("install", "--dsn", db_dsn)
    assert back.returncode == 0, back.stderr
    assert triggers(db_dsn) == OUR_TRIGGERS
    with Party(db_dsn) as party:  # it would keep WAL for nobody: gone
        assert party.query("SELECT count(*) FROM pg_replication_slots "
                           "WHERE database = current_database()") == [(0,)]


@pytest.mark.daemon
@pytest.mark.embedded_only  # a PostgreSQL of its own, from the embedded wheel
def test_without_logical_decoding_nothing_changes_and_the_fix_is_named(
        tmp_path: Path) -> None:
    server = DedicatedPostgres(tmp_path)
    server.start("wal_level=replica")  # PostgreSQL's default
    try:
        dsn = server.database(wal=False)
        result = partysense_db("install", "--dsn", dsn, "--source", "wal")
        assert result.returncode == 1
        assert "nothing was changed" in result.stderr
        assert "wal_level is replica" in result.stderr
        assert "ALTER SYSTEM SET wal_level = logical" in result.stderr
        assert "restart PostgreSQL" in result.stderr and "Traceback" not in result.stderr
        assert triggers(dsn) == OUR_TRIGGERS  # still in listen mode
        assert wal_state(dsn)[0] == []
    finally:
        server.close()


@pytest.mark.logic
def test_settings_name_every_problem_and_the_notes() -> None:
    fine = Settings("logical", 10, 10, 0, "1GB", True, "app")
    assert fine.problems() == []
    assert any("app has it" in note for note in fine.notes())
    bad = Settings("minimal", 2, 0, 2, "-1", False, "app")
    problems = bad.problems()
    assert len(problems) == 3
    assert "wal_level is minimal" in problems[0]
    assert "max_replication_slots is 2 and 2 slots exist" in problems[1]
    assert "max_wal_senders is 0" in problems[2]
    notes = " ".join(bad.notes())
    assert "app does not" in notes and "max_slot_wal_keep_size is unlimited" in notes
