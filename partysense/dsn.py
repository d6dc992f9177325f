"""Where the database is: the DSN from the command line or the environment.

Both libpq forms are accepted (a ``postgresql://`` URI or ``key=value``
words); libpq itself reads PGPASSWORD and ~/.pgpass, so a password never
has to be written in our options. :func:`redact` is what goes into logs.
"""

from __future__ import annotations

import os

from psycopg2.extensions import make_dsn, parse_dsn

DSN_ENVIRONMENT_VARIABLE = "PARTYSENSE_DSN"

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
    """The DSN as key=value words with any password replaced by ``***``."""
    try:
        params = parse_dsn(dsn)
    except Exception:
        return "<unparseable DSN>"
    if "password" in params:
        params["password"] = "***"
    return make_dsn(**params)


def for_listener(dsn: str) -> str:
    """The DSN with keepalives and an application_name added where it names none.

    The application_name makes the daemon's one connection easy to find in
    pg_stat_activity.
    """
    return with_defaults(dsn, **KEEPALIVE_SETTINGS, application_name="partysense-live")


def with_defaults(dsn: str, **defaults: str) -> str:
    """The DSN with each of ``defaults`` added unless it already sets that key."""
    params = validate(dsn)
    extra = {key: value for key, value in defaults.items() if key not in params}
    return make_dsn(dsn, **extra) if extra else dsn


def describe(dsn: str) -> str:
    """A short human description for the start-up log line: host, port, database."""
    params = validate(dsn)
    host = params.get("host") or params.get("hostaddr") or "(default socket)"
    port = params.get("port", "5432")
    database = params.get("dbname") or params.get("user") or "(default database)"
    return f"database {database} on {host} port {port}"
