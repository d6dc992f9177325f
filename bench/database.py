"""The PostgreSQL a benchmark runs against: an embedded one, or one named by a DSN.

Each run gets a fresh database with the stand-in schema and our triggers,
and a party in it: events, artists, tracks. Both services under test share it.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

from partysense.db import sqlfiles
from partysense.db.sqlfiles import execute_autocommit


@contextmanager
def server(admin_dsn: str | None) -> Iterator[str]:
    """An admin DSN: the one given, or an embedded PostgreSQL started in a temp dir."""
    if admin_dsn:
        yield admin_dsn
        return
    from partysense.db.embedded import start_server, stop_server

    with tempfile.TemporaryDirectory(prefix="partysense-bench-") as scratch:
        handle = start_server(Path(scratch) / "pgdata")
        try:
            yield handle.get_uri()
        finally:
            stop_server(handle)


# Run by another tree's python: its sqlfiles, where its layout keeps them
# (partysense/db/ since the redesign, partysense/ before it).
INSTALL_IN_TREE = """
import sys
try:
    from partysense.db import sqlfiles
except ImportError:
    from partysense import sqlfiles
sqlfiles.install(sys.argv[1], demo_schema=True)
"""


@contextmanager
def bench_database(admin_dsn: str, tree: Path | None = None) -> Iterator[str]:
    """A fresh database with the schema and triggers installed, dropped afterwards.

    ``tree``: another checkout whose daemon will run (``--tree``): its own
    triggers, installed by its .venv's python, so that its daemon reads the
    notifications it was written for (a daemon from before signatures reads
    every signed one as forged).
    """
    name = f"partysense_bench_{uuid.uuid4().hex[:10]}"
    execute_autocommit(admin_dsn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_dsn(admin_dsn, dbname=name)
    try:
        if tree is None:
            sqlfiles.install(dsn, demo_schema=True)
        else:
            subprocess.run([str(tree / ".venv" / "bin" / "python"), "-c",
                            INSTALL_IN_TREE, dsn],
                           cwd=tree, check=True, timeout=120)
        yield dsn
    finally:
        execute_autocommit(admin_dsn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


SEED_TRIGGERS = Path(__file__).resolve().parent / "seed_triggers.sql"


@contextmanager
def seed_triggers(dsn: str) -> Iterator[None]:
    """The old service's triggers instead of ours for a while (the asyncio reference's
    side), then ours again (install.sql drops the seed's)."""
    execute_autocommit(dsn, SEED_TRIGGERS.read_text("utf-8"))
    try:
        yield
    finally:
        sqlfiles.install(dsn)


@contextmanager
def wal_mode(dsn: str, timeout: float = 30.0) -> Iterator[None]:
    """The database in WAL mode for a while (sql/wal.sql: the publication, no vote
    triggers; a daemon with --source wal relays), then in the listen mode again
    (install.sql puts the triggers back and drops the relay's slot, once no
    stream holds it: the WAL sender may outlive the stopped daemon a moment)."""
    sqlfiles.install(dsn, wal=True)
    try:
        yield
    finally:
        poll(dsn, "SELECT count(*) FROM pg_replication_slots "
                  "WHERE database = current_database() AND active",
             lambda rows: not rows[0][0], timeout)
        sqlfiles.install(dsn)


def poll(dsn: str, query: str, done: Callable[[list[tuple[Any, ...]]], bool],
         timeout: float) -> list[tuple[Any, ...]]:
    """Run ``query`` every 0.1 s until ``done(rows)`` or ``timeout``; its last rows."""
    deadline = time.monotonic() + timeout
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            while True:
                cursor.execute(query)
                rows = cursor.fetchall()
                if done(rows) or time.monotonic() > deadline:
                    return rows
                time.sleep(0.1)
    finally:
        connection.close()


def create_party(dsn: str, events: int, tracks: int = 20) -> tuple[list[int], list[int]]:
    """``events`` events and ``tracks`` tracks; returns their ids."""
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            event_ids = []
            for number in range(events):
                cursor.execute("INSERT INTO event_event (title) VALUES (%s) RETURNING id",
                               (f"Bench party {number + 1}",))
                event_ids.append(cursor.fetchone()[0])
            track_ids = []
            for number in range(tracks):
                cursor.execute("INSERT INTO music_artist (name) VALUES (%s) RETURNING id",
                               (f"Artist {number + 1}",))
                artist_id = cursor.fetchone()[0]
                cursor.execute(
                    "INSERT INTO music_track (artist_id, name) VALUES (%s, %s) RETURNING id",
                    (artist_id, f"Track {number + 1}"))
                track_ids.append(cursor.fetchone()[0])
        return event_ids, track_ids
    finally:
        connection.close()


def libpq_environment(dsn: str) -> dict[str, str]:
    """PG* variables naming ``dsn``, for clients that read them (node-postgres does)."""
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER",
             "password": "PGPASSWORD", "dbname": "PGDATABASE"}
    return {names[key]: value for key, value in parse_dsn(dsn).items()
            if key in names and value}
