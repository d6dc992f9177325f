"""Trimming the change log: changes older than ``--retention`` are deleted.

The log is only there to replay what a listener or a v2 client missed; kept
forever it would grow with every vote. Trimmed in batches on the query
connection every minute (or every ``retention`` seconds, if shorter).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from partysense.core.errors import first_line
from partysense.core.interfaces import Queries
from partysense.db import changelog


class RetentionService(Service):
    """Deletes changes older than ``retention_seconds``, keeping the newest."""

    log = Logger()

    def __init__(self, queries: Queries, clock: IReactorTime, retention_seconds: float,
                 batch: int = changelog.TRIM_BATCH) -> None:
        self._queries = queries
        self._retention_seconds = retention_seconds
        self._batch = batch
        self._loop = LoopingCall(self.trim)
        self._loop.clock = clock
        self.trimmed = 0

    def startService(self) -> None:
        super().startService()
        # Not now: the query connection is not up yet; a minute late is fine.
        self._loop.start(min(60.0, self._retention_seconds), now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def trim(self) -> Any:
        """One pass: delete in batches until a batch comes back short."""
        params = {"keep": self._retention_seconds, "batch": self._batch}
        total = 0
        try:
            while self._queries.connected:
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
