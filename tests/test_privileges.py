"""The GRANTs in docs/operations.md are enough: the daemon runs as a role that has
only them, in a database where PUBLIC has been stripped of its defaults, and a
Django-like writer role with the documented extra grants fires the triggers.

The SQL is read from the document itself, so the document cannot drift.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from partysense.db import sqlfiles
from partysense.db.sqlfiles import execute_autocommit
from tests.support import Party, listen_mode_only, require_logical_decoding

pytestmark = pytest.mark.daemon

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def documented_grants(name: str) -> str:
    """The ```sql block after ``<!-- grants:NAME -->`` in docs/operations.md."""
    found = re.search(rf"<!-- grants:{name} -->\n```sql\n(.*?)```", OPERATIONS.read_text(),
                      re.DOTALL)
    assert found, f"docs/operations.md has no grants:{name} block"
    return found.group(1)


class Role:
    """A login role made for one test, with a password made at test time."""

    def __init__(self, admin_dsn: str, db_dsn: str) -> None:
        self.name = f"ps_{uuid.uuid4().hex[:10]}"
        self.password = secrets.token_hex(16)
        self._admin_dsn = admin_dsn
        params = parse_dsn(db_dsn)
        params.pop("password", None)
        params["user"] = self.name
        self.dsn = make_dsn(**params)  # no password: it comes from PGPASSWORD
        execute_autocommit(admin_dsn, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(self.name), sql.Literal(self.password)).as_string(
                psycopg2.connect(admin_dsn)))

    def env(self) -> dict[str, str]:
        return dict(os.environ, PGPASSWORD=self.password)

    def connect(self) -> psycopg2.extensions.connection:
        connection = psycopg2.connect(self.dsn, password=self.password)
        connection.autocommit = True
        return connection

    def drop(self) -> None:
        execute_autocommit(self._admin_dsn, sql.SQL("DROP ROLE IF EXISTS {}").format(
            sql.Identifier(self.name)).as_string(psycopg2.connect(self._admin_dsn)))


@pytest.fixture
def hardened(admin_dsn: str, db_dsn: str) -> Iterator[tuple[Role, Role]]:
    """(daemon role, writer role) in a test database without PUBLIC's defaults."""
    database = parse_dsn(db_dsn)["dbname"]
    daemon_role, writer = Role(admin_dsn, db_dsn), Role(admin_dsn, db_dsn)
    try:
        execute_autocommit(db_dsn, f"""
            REVOKE ALL ON DATABASE "{database}" FROM PUBLIC;
            REVOKE ALL ON SCHEMA public FROM PUBLIC;
            REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
        """)
        daemon_grants = documented_grants("daemon").replace(
            "DATABASE partysense ", f'DATABASE "{database}" ').replace(
            "partysense_live", daemon_role.name)
        execute_autocommit(db_dsn, daemon_grants)
        # What Django's own role has on its tables, then the documented extra.
        execute_autocommit(db_dsn, f"""
            GRANT CONNECT ON DATABASE "{database}" TO {writer.name};
            GRANT USAGE ON SCHEMA public TO {writer.name};
            GRANT SELECT, INSERT, UPDATE, DELETE ON event_vote TO {writer.name};
            GRANT USAGE ON SEQUENCE event_vote_id_seq TO {writer.name};
            GRANT SELECT ON event_event, music_view, music_track, music_artist
                TO {writer.name};
        """ + documented_grants("writer").replace("partysense_django", writer.name))
        yield daemon_role, writer
    finally:
        # The test database (and its grants) goes first; then the roles can.
        from tests.conftest import drop_database
        drop_database(admin_dsn, database)
        daemon_role.drop()
        writer.drop()


def vote_as(writer: Role, event_id: int, track_id: int, up: bool) -> int:
    """Django's two statements (get_or_create, then save), as the writer role."""
    connection = writer.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO event_vote (event_id, track_id, user_id) "
                           "VALUES (%s, %s, 1) RETURNING id", (event_id, track_id))
            vote_id = int(cursor.fetchone()[0])
            cursor.execute("UPDATE event_vote SET is_positive = %s WHERE id = %s",
                           (up, vote_id))
        return vote_id
    finally:
        connection.close()


def metric(daemon: Daemon, name: str) -> float | None:
    with urllib.request.urlopen(daemon.admin_url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


@listen_mode_only("the listen mode's grants and triggers; the WAL mode's grants are "
                  "test_the_wal_mode_runs_on_the_documented_grants's")
def test_the_daemon_runs_on_the_documented_grants(
        hardened: tuple[Role, Role], party: Party, tmp_path: Path) -> None:
    daemon_role, writer = hardened
    event_id = party.event("Least privilege")
    track_id = party.track("Song", "Band")
    vote_as(writer, event_id, track_id, up=True)
    # No more than documented: the daemon's role cannot vote or read other tables.
    with daemon_role.connect() as probe, probe.cursor() as cursor:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cursor.execute("INSERT INTO event_vote (event_id, track_id) VALUES (%s, %s)",
                           (event_id, track_id))
    with daemon_role.connect() as probe, probe.cursor() as cursor:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cursor.execute("SELECT * FROM music_track")
    # Only the columns it uses, and no DELETE on the log (it trims through a function
    # that keeps recent changes), and it cannot record a change.
    for forbidden in ("SELECT user_id FROM event_vote",
                      "DELETE FROM partysense_change",
                      "DELETE FROM partysense_presence",
                      "SELECT partysense_record('insert', 1, 1, 1, true, NULL)"):
        with daemon_role.connect() as probe, probe.cursor() as cursor:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute(forbidden)
    # The app's role votes through the trigger, but cannot write the log itself.
    with writer.connect() as probe, probe.cursor() as cursor:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cursor.execute("INSERT INTO partysense_change (op, vote_id, event_id, track_id, up)"
                           " VALUES ('insert', 1, %s, %s, true)", (event_id, track_id))

    # --retention 1: the trim runs every second, as this role.
    # --presence-interval 1: presence reports every second, as this role.
    with Daemon(daemon_role.dsn, tmp_path, "--retention", "1", "--presence-interval", "1",
                env=daemon_role.env()) as daemon:
        with urllib.request.urlopen(daemon.url + "/api/events", timeout=5) as response:
            assert {"id": event_id, "title": "Least privilege"} in json.loads(response.read())
        with connect(daemon.ws_url, open_timeout=10) as seed, \
                connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as v2:
            seed.send(json.dumps({"event": event_id}))  # checks event_event
            v2.send(json.dumps({"type": "subscribe", "event": event_id, "id": "s"}))
            snapshot = json.loads(v2.recv(timeout=10))  # tallies: event_vote, music_view
            assert snapshot["type"] == "snapshot", snapshot
            assert snapshot["tracks"] == [{"tid": track_id, "track": "Song", "artist": "Band",
                                           "up": 1, "down": 0}]
            wait_for(lambda: daemon.health()[1]["channels"] == [f"event_{event_id}"], 10,
                     "the subscriptions")

            # The listener connection dies; a vote commits while it is away;
            # the catch-up (partysense_change, partysense_payload) brings it.
            party.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'partysense-live' "
                        "AND usename = %s", (daemon_role.name,))
            wait_for(lambda: daemon.health()[0] == 503, 10, "the listener to notice")
            vote_id = vote_as(writer, event_id, track_id, up=False)
            received = [json.loads(seed.recv(timeout=20)) for _ in range(2)]
            assert [(m["vote"], m["op"]) for m in received] == [(vote_id, "insert"),
                                                                 (vote_id, "update")]
            assert all(m["ts"] is not None for m in received)
            assert [json.loads(v2.recv(timeout=10))["seq"] for _ in range(2)] == \
                [m["seq"] for m in received]

        # A v2 client resuming from the snapshot's cursor: the replay query.
        with connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as again:
            again.send(json.dumps({"type": "subscribe", "event": event_id,
                                   "cursor": snapshot["cursor"]}))
            answer = json.loads(again.recv(timeout=10))
            # Retention may already have trimmed the log: then a fresh snapshot.
            assert answer["type"] in ("subscribed", "snapshot"), answer

        # Retention trims as this role, keeping only the newest change.
        wait_for(lambda: party.query("SELECT count(*) FROM partysense_change")[0][0] == 1, 15,
                 "the change log to be trimmed")
        assert wait_for(lambda: metric(daemon, "partysense_notification_queue_usage")
                        is not None, 15, "the queue usage")
        assert metric(daemon, "partysense_listener_up") == 1
        assert wait_for(lambda: (metric(daemon, "partysense_presence_reports_total") or 0) >= 2,
                        10, "presence to report")
        assert metric(daemon, "partysense_presence_report_failures_total") == 0
        assert wait_for(lambda: (metric(daemon, "partysense_changes_trimmed_total") or 0) >= 2,
                        10, "the trim to be counted")
    log = daemon.log()
    assert "permission denied" not in log.lower(), log
    assert "Traceback" not in log


def test_the_wal_mode_runs_on_the_documented_grants(
        hardened: tuple[Role, Role], party: Party, tmp_path: Path) -> None:
    """docs/operations.md §13's grants, after section 3's: a --source wal daemon as
    that role makes the slot, relays a writer role's votes (partysense_relay_reset,
    partysense_relay_write) and a client receives them, signed by the relay."""
    require_logical_decoding(party.dsn)
    daemon_role, writer = hardened
    sqlfiles.install(party.dsn, wal=True)  # as the owner, as partysense-db does
    execute_autocommit(party.dsn, documented_grants("daemon-wal").replace(
        "partysense_live", daemon_role.name))
    event_id = party.event("Least privilege, WAL")
    track_id = party.track("Song", "Band")
    # No more than documented: the relay's tables are read-only to the role.
    for forbidden in ("DELETE FROM partysense_tally", "UPDATE partysense_relay SET slot = ''",
                      "SELECT partysense_record('insert', 1, 1, 1, true, NULL)"):
        with daemon_role.connect() as probe, probe.cursor() as cursor:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute(forbidden)
    with Daemon(daemon_role.dsn, tmp_path, "--source", "wal",
                env=daemon_role.env()) as daemon:
        wait_for(lambda: daemon.health()[1].get("relay", {}).get("state") == "relaying", 30,
                 "the relay to make and hold the slot")
        with connect(daemon.ws_url, open_timeout=10) as seed, \
                connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as v2:
            seed.send(json.dumps({"event": event_id}))
            v2.send(json.dumps({"type": "subscribe", "event": event_id, "id": "s"}))
            snapshot = json.loads(v2.recv(timeout=10))  # partysense_tally, as the role
            assert snapshot["type"] == "snapshot", snapshot
            wait_for(lambda: daemon.health()[1]["channels"] == [f"event_{event_id}"], 10,
                     "the subscriptions")
            vote_id = vote_as(writer, event_id, track_id, up=False)
            received = [json.loads(seed.recv(timeout=20)) for _ in range(2)]
            assert [(m["vote"], m["op"]) for m in received] == [(vote_id, "insert"),
                                                                 (vote_id, "update")]
            changes = [json.loads(v2.recv(timeout=10)) for _ in range(2)]
            assert [c["seq"] for c in changes] == [m["seq"] for m in received]
        assert daemon.health()[1]["relay"]["state"] == "relaying"
    assert party.query("SELECT up, down FROM partysense_tally WHERE event_id = %s",
                       (event_id,)) == [(0, 1)]
