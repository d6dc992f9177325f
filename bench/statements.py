"""Counting the statements a daemon sends PostgreSQL, exactly: pg_stat_statements.

The embedded PostgreSQL the benchmarks start does not load the module; here
it is started, told to (``ALTER SYSTEM``), and restarted. A server named by
``--dsn`` counts only if it already loads it; otherwise the counts are None.

Counts are differences of ``calls`` between two readings, for the bench
database and the daemon's own role only (``ROLE``): the daemon's statements,
BEGIN/COMMIT included, and none of the benchmark's (its votes, what their
trigger runs, these readings).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn

READ = """
    SELECT query, sum(calls)::bigint FROM pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND userid = (SELECT oid FROM pg_roles WHERE rolname = %s)
    GROUP BY query
"""

# The daemon connects as a role of its own, so that its statements are told
# apart from the benchmark's and from what the vote trigger runs.
ROLE = "partysense_storm_daemon"

# What a statement is, by what it reads (the texts differ between versions
# of the daemon; these substrings do not).
KINDS = (
    ("snapshots", "GROUP BY"),              # an event's tallies
    ("change-log reads", "partysense_change"),  # replays, the doorbell's reads, bounds
    ("event lookups", "EXISTS"),            # does event N exist?
)


@contextmanager
def server(admin_dsn: str | None) -> Iterator[str]:
    """An admin DSN; an embedded server (in a temp dir) loading pg_stat_statements."""
    if admin_dsn:
        yield admin_dsn
        return
    from partysense.db.embedded import start_server, stop_server

    with tempfile.TemporaryDirectory(prefix="partysense-storm-") as scratch:
        data = Path(scratch) / "pgdata"
        handle = start_server(data)
        try:
            connection = psycopg2.connect(handle.get_uri())
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            connection.close()
        finally:
            stop_server(handle)
        handle = start_server(data)
        try:
            yield handle.get_uri()
        finally:
            stop_server(handle)


class Statements:
    """Readings of pg_stat_statements for one database (None when it is not loaded).

    ``daemon_dsn`` is the DSN for the daemon: as ROLE (a member of the bench's
    own role, so with its privileges) when that role could be made, else the
    bench's own DSN (and no counts).
    """

    def __init__(self, dsn: str) -> None:
        self._connection = psycopg2.connect(dsn)
        self._connection.autocommit = True
        self.daemon_dsn = dsn
        try:
            with self._connection.cursor() as cursor:
                cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                cursor.execute(READ, (ROLE,))  # fails unless the server loads the module
                cursor.execute("SELECT current_user, "
                               "EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", (ROLE,))
                user, exists = cursor.fetchone()
                if not exists:
                    cursor.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
                cursor.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(user),
                                                                sql.Identifier(ROLE)))
            self.available = True
            self.daemon_dsn = make_dsn(dsn, user=ROLE)
        except psycopg2.Error:
            self.available = False

    def read(self) -> dict[str, int] | None:
        if not self.available:
            return None
        with self._connection.cursor() as cursor:
            cursor.execute(READ, (ROLE,))
            return {query: int(calls) for query, calls in cursor.fetchall()}

    def close(self) -> None:
        self._connection.close()


def difference(before: dict[str, int] | None,
               after: dict[str, int] | None) -> dict[str, int] | None:
    """Calls per statement text between two readings (the ones that ran)."""
    if before is None or after is None:
        return None
    calls = {query: n - before.get(query, 0) for query, n in after.items()}
    return {query: n for query, n in calls.items() if n > 0}


def by_kind(calls: dict[str, int] | None) -> dict[str, int] | None:
    """Totals per kind of statement, plus "other" and "all"."""
    if calls is None:
        return None
    kinds = {name: 0 for name, _ in KINDS} | {"other": 0}
    for query, n in calls.items():
        name = next((name for name, needle in KINDS if needle.lower() in query.lower()),
                    "other")
        kinds[name] += n
    kinds["all"] = sum(calls.values())
    return kinds
