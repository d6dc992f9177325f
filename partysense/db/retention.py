"""Trimming the change log: changes older than ``--retention`` are deleted.

The log is only there to replay what a listener or a v2 client missed; kept
forever it would grow with every vote. Trimmed in batches on the query
connection every minute (or every ``retention`` seconds, if shorter).
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from partysense.core.errors import first_line
from partysense.core.interfaces import Queries
from partysense.db import changelog


class RetentionService(TimerService):
    """Deletes changes older than ``retention_seconds``, keeping the newest.

    The first pass comes at start, before the query connection is up, and
    does nothing: the first real trim is a minute later, which is fine.
    """

    log = Logger()

    def __init__(self, queries: Queries, clock: IReactorTime, retention_seconds: float,
                 batch: int = changelog.TRIM_BATCH) -> None:
        super().__init__(min(60.0, retention_seconds), self.trim)
        self.clock = clock
        self._queries = queries
        self._retention_seconds = retention_seconds
        self._batch = batch
        self._stopping = False
        self.trimmed = 0

    def startService(self) -> None:
        self._stopping = False
        super().startService()

    def stopService(self) -> defer.Deferred[None]:
        # TimerService waits for a pass under way: it ends after its batch.
        self._stopping = True
        return super().stopService()

    @defer.inlineCallbacks
    def trim(self) -> Any:
        """One pass: delete in batches until a batch comes back short."""
        params = {"keep": self._retention_seconds, "batch": self._batch}
        total = 0
        try:
            while self._queries.connected and not self._stopping:
                rows = yield self._queries.runQuery(changelog.TRIM_QUERY, params)
                total += rows[0][0]
                if rows[0][0] < self._batch:
                    break
        except Exception as error:
            self.log.warn("Trimming the change log failed: {why}", why=first_line(error))
        if total:
            self.trimmed += total
            self.log.info("Trimmed {count} changes older than {keep:g} s from the change log.",
                          count=total, keep=self._retention_seconds)
