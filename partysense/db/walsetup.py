"""What WAL mode needs of PostgreSQL, checked before anything is changed.

``partysense-db install --source wal`` asks :data:`SETTINGS_QUERY` first and
refuses, saying which setting to change and how, when logical decoding
cannot work: without it PostgreSQL would accept the publication and fail
later, obscurely, when the daemon asks for a slot ("logical decoding
requires wal_level >= logical"). What is not wrong but worth knowing
(``max_slot_wal_keep_size``, the daemon's role) comes back as notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg2

from partysense.core.errors import first_line
from partysense.db.errors import QueryRefused

PUBLICATION = "partysense"

SETTINGS_QUERY = """
    SELECT current_setting('wal_level'),
           current_setting('max_replication_slots')::int,
           current_setting('max_wal_senders')::int,
           (SELECT count(*) FROM pg_replication_slots)::int,
           current_setting('max_slot_wal_keep_size'),
           (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
           current_user
"""


@dataclass(frozen=True)
class Settings:
    wal_level: str
    max_replication_slots: int
    max_wal_senders: int
    slots_used: int
    max_slot_wal_keep_size: str
    may_replicate: bool
    role: str

    def problems(self) -> list[str]:
        """What stops a daemon from streaming, each with its fix."""
        found = []
        if self.wal_level != "logical":
            found.append(f"wal_level is {self.wal_level}, and logical decoding needs "
                         "wal_level = logical: ALTER SYSTEM SET wal_level = logical; then "
                         "restart PostgreSQL (a reload is not enough)")
        if self.max_replication_slots <= self.slots_used:
            found.append(f"max_replication_slots is {self.max_replication_slots} and "
                         f"{self.slots_used} slots exist: each daemon (each --workers "
                         "process) needs one; raise it (ALTER SYSTEM SET "
                         "max_replication_slots = ...; then restart PostgreSQL)")
        if self.max_wal_senders < 1:
            found.append("max_wal_senders is 0: each daemon's stream is one WAL sender; "
                         "raise it (ALTER SYSTEM SET max_wal_senders = ...; then restart)")
        return found

    def notes(self) -> list[str]:
        """Not errors: what the operator should know (docs/operations.md)."""
        notes = [f"the daemon's role needs the REPLICATION attribute (ALTER ROLE ... "
                 f"REPLICATION); {self.role} "
                 + ("has it" if self.may_replicate else "does not")]
        if self.max_slot_wal_keep_size == "-1":
            notes.append("max_slot_wal_keep_size is unlimited: a permanent slot left behind "
                         "would keep WAL until the disk fills (the daemon's slots are "
                         "temporary; set a bound if you make permanent ones)")
        return notes


def read_settings(dsn: str) -> Settings:
    """The server's settings as WAL mode sees them; QueryRefused if unreachable."""
    try:
        connection = psycopg2.connect(dsn)
    except psycopg2.Error as error:
        raise QueryRefused(first_line(error)) from None
    try:
        with connection.cursor() as cursor:
            cursor.execute(SETTINGS_QUERY)
            row: Any = cursor.fetchone()
    except psycopg2.Error as error:
        raise QueryRefused(first_line(error)) from None
    finally:
        connection.close()
    return Settings(*row)
