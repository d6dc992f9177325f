"""The SQL scripts shipped in ``sql/`` and how to run them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import psycopg2

from partysense.core.errors import first_line
from partysense.db.errors import QueryRefused

INSTALL_SCRIPT = "install.sql"
UNINSTALL_SCRIPT = "uninstall.sql"
DEMO_SCHEMA_SCRIPT = "demo_schema.sql"
# WAL mode (--source wal): the publication, without the vote triggers.
WAL_SCRIPT = "wal.sql"
# Back to the listen mode: the WAL mode's relay slot (partysense/db/walrelay.py)
# would keep WAL for nobody. Only when nobody streams it; a role that may not
# drop slots leaves it, with a warning (docs/operations.md §13).
DROP_RELAY_SLOT = """
    DO $$
    BEGIN
        PERFORM pg_drop_replication_slot(slot_name) FROM pg_replication_slots
        WHERE slot_name = 'partysense_relay_' || (SELECT oid FROM pg_database
                                                  WHERE datname = current_database())::text
          AND NOT active;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'the WAL mode''s slot is left (%): drop it as a superuser', SQLERRM;
    END;
    $$
"""
# Two installs at once (say, two daemons starting on one embedded database, or
# a migration beside `partysense-db install`) would race on CREATE OR REPLACE:
# they take turns on this lock, held until the end of the transaction.
INSTALL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('partysense install'))"


def read_sql(name: str) -> str:
    """The text of one script, from the installed package or from a checkout."""
    try:
        return resources.files("partysense.sql").joinpath(name).read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        # An editable (compat) install or a bare checkout: sql/ is beside us.
        checkout = Path(__file__).resolve().parents[2] / "sql" / name
        return checkout.read_text("utf-8")


def execute_autocommit(dsn: str, statement: Any) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def install(dsn: str, demo_schema: bool = False, wal: bool = False) -> list[str]:
    """Run the install script (and first the stand-in schema) in one transaction.

    With ``wal``, then the WAL mode's script (docs/operations.md, "The WAL
    source"); without it, install.sql alone puts the listen mode's triggers
    back. Returns the names of the scripts that ran. All are idempotent, so
    running this again is harmless; it is how upgrades are installed too.
    """
    scripts = ([DEMO_SCHEMA_SCRIPT] if demo_schema else []) + [INSTALL_SCRIPT]
    scripts += [WAL_SCRIPT] if wal else []
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(INSTALL_LOCK)
            for script in scripts:
                cursor.execute(read_sql(script))
            if not wal:
                cursor.execute(DROP_RELAY_SLOT)
    finally:
        connection.close()
    return scripts


def install_or_refused(dsn: str, demo_schema: bool = False, wal: bool = False) -> list[str]:
    """``install``, with what went wrong as QueryRefused (for partysense-db, which
    stays out of psycopg2)."""
    try:
        return install(dsn, demo_schema, wal)
    except psycopg2.Error as error:
        raise QueryRefused(first_line(error)) from None
