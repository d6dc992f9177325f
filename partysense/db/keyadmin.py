"""Rotating the signing keys, for ``partysense-db key`` (docs/operations.md).

The keys live in ``partysense_key`` (sql/install.sql); these run its two
functions as the role that installed them.
"""

from __future__ import annotations

from datetime import datetime

import psycopg2

from partysense.core.errors import first_line
from partysense.db.errors import QueryRefused

ROTATE = "SELECT partysense_rotate_key(%s)"
ACTIVATES = "SELECT activates FROM partysense_key WHERE id = %s"
RETIRE = "SELECT partysense_retire_keys()"
LIST = """
    SELECT id, activates, created, activates <= now(),
           id = (SELECT max(id) FROM partysense_key WHERE activates <= now())
    FROM partysense_key ORDER BY id
"""

# id, when it signs from, when it was made, active, signing now
KeyRow = tuple[int, datetime, datetime, bool, bool]


def rotate(dsn: str, delay: float) -> tuple[int, datetime]:
    """A new key, signing ``delay`` seconds from now (at least 30): its id and when."""
    [(key_id,)] = _run(dsn, ROTATE, (delay,))
    [(activates,)] = _run(dsn, ACTIVATES, (key_id,))
    return key_id, activates


def retire(dsn: str) -> int:
    """Remove the keys older than the one signing now; how many went."""
    return int(_run(dsn, RETIRE)[0][0])


def listed(dsn: str) -> list[KeyRow]:
    """Every key, oldest first (never the secrets)."""
    return [(row[0], row[1], row[2], row[3], row[4]) for row in _run(dsn, LIST)]


def _run(dsn: str, query: str, params: tuple[object, ...] | None = None) -> list[tuple]:
    try:
        connection = psycopg2.connect(dsn)
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall()
        finally:
            connection.close()
    except psycopg2.Error as error:
        raise QueryRefused(first_line(error)) from None
