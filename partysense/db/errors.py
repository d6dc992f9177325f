"""What db/ raises to the layers above it, so that none of them speaks psycopg2.

A query either could not be asked (``NotConnected``: no connection, or it
was lost under the query; ``Overloaded``: too many wait already) or was
refused by a database that answered (``QueryRefused``: a missing privilege,
a missing install step). The first two mean "retry soon"; the third is the
sysadmin's problem, and its message says what the database said.
"""

from __future__ import annotations


class NotConnected(Exception):
    """The service has no database connection right now."""


class Overloaded(NotConnected):
    """Too many queries wait already: asked again later, this one may be answered."""


class QueryRefused(Exception):
    """The database answered the query with an error (its first line is the message)."""
