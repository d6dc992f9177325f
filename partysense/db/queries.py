"""The connection clients' questions use: v2 snapshots and replays, "does event N
exist?", ``/api/events``, the notification-queue poll and the retention trim.

Kept apart from the listener's connection on purpose: a storm of snapshots
after a restart once queued thousands of queries in front of the listener's
probe and its LISTENs, delaying every vote behind them; here the worst a
client can do is make other clients' questions wait (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from partysense.db.dsn import DSNSource
from partysense.db.pgservice import PostgresService

# Queries waiting on the connection at most; past it a client's request is
# answered "unavailable" (v2) or 1013 (seed) at once. A snapshot takes a few
# milliseconds: 1,000 waiting is seconds of work already.
MAX_WAITING = 1000


class QueryService(PostgresService):
    """A reconnecting connection for queries and short transactions.

    A :class:`PostgresService` with its name, its cap on waiting queries and
    nothing to prepare: only a line in the log once it is ready.
    """

    def __init__(self, dsn: DSNSource, reactor: IReactorTime, **options: Any) -> None:
        options.setdefault("max_waiting", MAX_WAITING)
        super().__init__(dsn, reactor, role="query connection",
                         application_name="partysense-live queries",
                         on_connected=self._say_ready, **options)

    def _say_ready(self) -> None:
        self.log.info("Query connection to PostgreSQL ready.")
