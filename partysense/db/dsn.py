"""Where the database is: the DSN from the command line or the environment.

Both libpq forms are accepted (a ``postgresql://`` URI or ``key=value``
words); libpq itself reads PGPASSWORD and ~/.pgpass, so a password never
has to be written in our options. :func:`redact` is what goes into logs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet import defer

DSN_ENVIRONMENT_VARIABLE = "PARTYSENSE_DSN"

# A DSN, or a callable whose Deferred fires with one: the embedded database's
# DSN is only known once it has started.
DSNSource = str | Callable[[], defer.Deferred[str]]

# Detect a silently dead TCP connection within seconds, not hours: the
# kernel probes an idle connection after 5 s, every 2 s, and gives up after 3
# lost probes. Ignored by libpq for Unix sockets.
KEEPALIVE_SETTINGS = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
}


class DSNError(ValueError):
    """The DSN cannot be parsed; the message never includes a password."""


def dsn_from(option: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The DSN given by option, else by $PARTYSENSE_DSN, else None (embedded)."""
    source = os.environ if environ is None else environ
    value = option or source.get(DSN_ENVIRONMENT_VARIABLE) or None
    if value is not None:
        validate(value)
    return value


def validate(dsn: str) -> dict[str, str]:
    """The DSN's parameters, or DSNError with a message safe to log."""
    try:
        return parse_dsn(dsn)
    except Exception as error:  # libpq may echo the DSN, password included
        message = str(error).split("\n")[0]
        if may_hold_password(dsn):
            message = "invalid connection string (details hidden: it may hold a password)"
        raise DSNError(message) from None


def may_hold_password(dsn: str) -> bool:
    """True if ``dsn`` names a password: ``password=`` or a URI's ``user:secret@``."""
    if "password" in dsn.lower():
        return True
    scheme, separator, rest = dsn.partition("://")
    if not separator or scheme.lower() not in ("postgres", "postgresql"):
        return False
    userinfo, at, _ = rest.partition("@")
    return bool(at) and ":" in userinfo


def redact(dsn: str) -> str:
    """The DSN as key=value words with every password (``password``,
    ``sslpassword``, anything named like one) replaced by ``***``."""
    try:
        params = parse_dsn(dsn)
    except Exception:
        return "<unparseable DSN>"
    for key in params:
        if "password" in key or "secret" in key:
            params[key] = "***"
    return make_dsn(**params)


def for_connection(dsn: str, application_name: str) -> str:
    """The DSN with keepalives and an application_name added where it names none.

    The application_name makes the daemon's connections easy to find in
    pg_stat_activity.
    """
    return with_defaults(dsn, **KEEPALIVE_SETTINGS, application_name=application_name)


def with_defaults(dsn: str, **defaults: str) -> str:
    """The DSN with each of ``defaults`` added unless it already sets that key."""
    params = validate(dsn)
    extra = {key: value for key, value in defaults.items() if key not in params}
    return make_dsn(dsn, **extra) if extra else dsn


def when_known(source: DSNSource) -> defer.Deferred[str]:
    """The DSN of ``source``, once it is known."""
    return defer.maybeDeferred(source) if callable(source) else defer.succeed(source)
