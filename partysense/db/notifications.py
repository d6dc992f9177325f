"""A blocking LISTEN for ``partysense-db tail``: payloads as they come.

The daemon's LISTEN is the reactor-driven one in listener.py; a command-line
tail wants the simplest loop there is, and keeps psycopg2 inside db/.
"""

from __future__ import annotations

import select
from collections.abc import Iterator

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from partysense.core.errors import first_line
from partysense.db.errors import QueryRefused


def payloads(dsn: str, channel: str, application_name: str) -> Iterator[str | None]:
    """LISTEN on ``channel`` and yield each notification's payload, for ever.

    The first value yielded is None, once the LISTEN is in place (so the
    caller can say it listens); QueryRefused for whatever the database or the
    connection says went wrong.
    """
    try:
        connection = psycopg2.connect(make_dsn(dsn, application_name=application_name))
    except psycopg2.Error as error:
        raise QueryRefused(first_line(error)) from None
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        yield None
        while True:
            # poll() after a quiet timeout too: it notices a connection that went away.
            select.select([connection], [], [], 5.0)
            connection.poll()
            while connection.notifies:
                yield connection.notifies.pop(0).payload
    except psycopg2.Error as error:
        raise QueryRefused(first_line(error)) from None
    finally:
        connection.close()
