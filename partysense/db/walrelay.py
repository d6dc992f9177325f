"""The WAL relay: the change log written from the WAL, in commit order, by one daemon.

In WAL mode (``--source wal``, docs/exactness.md §8) the voter's transaction
carries no trigger: every daemon runs a :class:`WalRelay`, and the one that
holds the database's permanent slot (``partysense_relay``; PostgreSQL lets
one connection stream a slot at a time, so the others wait as standbys and
take over when it is free) streams event_vote's changes with pgoutput and
writes them, in commit order, to the change log and the tallies
(``partysense_relay_write``, sql/wal.sql), which also announces each change,
signed, as the listen mode's trigger does. Everything above, in every daemon,
then hears and reads them exactly as in the listen mode: the same
ListenerService, snapshot, resume, SSE and seed.

Exactly once: a batch is written in one transaction, and only then
acknowledged to the slot; a relay that reconnects, or takes over, replays
from the slot's acknowledged position and the SQL function skips every
transaction at or before the log's recorded ``end_lsn``. A batch never splits
a transaction. A new slot (or one that lost its WAL to
``max_slot_wal_keep_size``) resets the log and counts the tallies again from
event_vote in the slot's exported snapshot (``partysense_relay_reset``).

The SQL runs on a blocking psycopg2 connection in one thread of its own:
the relay's statements are few (one per batch) and strictly one at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.errors
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from partysense.core.errors import first_line
from partysense.db import dsn as dsnlib
from partysense.db.waldecoder import Transaction
from partysense.db.walrows import WRITE, Row, log_rows, write_arguments
from partysense.db.walstream import SlotInvalidated, WalStream, format_lsn
from partysense.db.worker import Worker

# The slot's name: slots are the cluster's, so one per database, by its oid.
SLOT_PREFIX = "partysense_relay_"
SLOT_QUERY = ("SELECT %s || oid::text FROM pg_database WHERE datname = current_database()")
PUBLICATIONS = "partysense,partysense_truncated"
# Seconds a statement of the relay may take (the reset, which counts every
# vote, longer) before its connection is given up as silent, with its thread.
STATEMENT_DEADLINE = 10.0
RESET_DEADLINE = 300.0
# Seconds between two looks at the slot (its lag, its WAL status), by every
# candidate, relaying or not.
SLOT_POLL = 5.0
# Seconds between acknowledgements of the WAL position while idle.
IDLE_ACKNOWLEDGE = 1.0
# The relay commits at most once per this many seconds: one relay commit (one
# WAL flush) for every vote would halve a lone voter's rate, as both flushes
# queue on the disk, while 5 ms between commits buys batches of dozens. A
# transaction that comes when the last commit is older than that is written
# at once (the next reactor turn): at a party's pace most votes wait for
# nothing, and only a burst waits, for the rest of those 5 ms.
BATCH_DELAY = 0.005
# Rows written at most per batch (whole transactions: one may exceed it).
BATCH = 500
RESET = "SELECT partysense_relay_reset(%s, %s::pg_lsn)"
TAKEN = ("SELECT (SELECT active FROM pg_replication_slots WHERE slot_name = %s), "
         "(SELECT reset_at FROM partysense_relay)")
# The slot's lag and WAL status (NULLs without a slot), and when the log last
# started over (NULL before the first relay made its slot): one row always.
LOOK = ("SELECT s.lag, s.wal_status, (SELECT reset_at FROM partysense_relay) "
        "FROM (VALUES (1)) AS one(x) LEFT JOIN ("
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag, "
        "wal_status FROM pg_replication_slots WHERE slot_name = %s) AS s ON true")


class WalRelay(Service):
    """Relays the slot to the change log while it holds the slot; a standby otherwise."""

    log = Logger()

    def __init__(self, dsn: dsnlib.DSNSource, reactor: Any, *, retry: float = 2.0) -> None:
        self._dsn = dsn
        self._reactor = reactor
        self._retry_delay = retry
        self._worker = Worker(reactor, "partysense-relay")
        self._local = threading.local()  # the worker thread's connection
        self._connect_to = ""          # the DSN it connects to, once known
        self._stream: WalStream | None = None
        self._retry: Any = None
        self._pending: list[tuple[int, float, list[Row]]] = []  # end_lsn, time, rows
        self._writing = False
        self._soon: Any = None         # the delayed call of the next write
        self._last_write = float("-inf")  # when the last batch was written (reactor time)
        self._idle: LoopingCall | None = None
        self.state = "stopped"
        self.reason = "not started"
        self.relayed = 0       # log rows written
        self.batches = 0
        self.takeovers = 0     # times this relay took the slot
        self.slot = ""         # known once connected (SLOT_QUERY)
        self.slot_lag_bytes: int | None = None   # None: not known (yet)
        self.slot_wal_status: str | None = None
        self._slot_poll: LoopingCall | None = None
        self._reset_at: Any = None      # partysense_relay.reset_at, as last seen
        self._on_reset: list[Callable[[], None]] = []

    # -- service ----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._worker.start()
        self._set("connecting", "connecting to the database")
        self._idle = LoopingCall(self._acknowledge_idle)
        self._idle.clock = self._reactor
        self._idle.start(IDLE_ACKNOWLEDGE, now=False)
        self._slot_poll = LoopingCall(self._look_at_slot)
        self._slot_poll.clock = self._reactor
        self._slot_poll.start(SLOT_POLL, now=False)
        self._attempt()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for loop in (self._idle, self._slot_poll):
            if loop is not None and loop.running:
                loop.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._drop_stream()
        self._set("stopped", "service stopped")
        # Not waited for: a statement stuck on a silent connection must not hold
        # the daemon's shutdown (partysense/db/worker.py).
        self._worker.run(self._close_blocking).addErrback(lambda _: None)
        self._worker.stop()
        return defer.succeed(None)

    @property
    def acknowledged_lsn(self) -> int:
        """Where the slot may move to: every change before it is in the log."""
        return 0 if self._stream is None else self._stream.acknowledged_lsn

    @property
    def lag_bytes(self) -> int:
        """WAL streamed to this relay and not yet written to the log."""
        stream = self._stream
        return 0 if stream is None else max(0, stream.received_lsn - stream.acknowledged_lsn)

    def on_reset(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when a relay (this one or another daemon's) made the
        slot again: the log started over, every cursor and tally from before is void."""
        self._on_reset.append(callback)

    def _saw_reset_at(self, reset_at: Any) -> None:
        """Seen at each look at the slot, and by the relay that reset."""
        if reset_at is None:
            return
        before, self._reset_at = self._reset_at, reset_at
        if before is not None and reset_at != before:
            self.log.warn("The WAL relay's slot was made again at {when}: the change log "
                          "started over.", when=reset_at)
            for callback in self._on_reset:
                callback()

    def _acknowledge_idle(self) -> None:
        """Nothing to write: let the slot move past the database's other WAL too."""
        if self._stream is not None and not self._writing and not self._pending:
            self._stream.acknowledge_received()

    @defer.inlineCallbacks
    def _look_at_slot(self) -> Any:
        """How much WAL the slot holds that no relay has logged, and its status
        (``lost``: invalidated by max_slot_wal_keep_size)."""
        if not self.slot:
            return
        try:
            self.slot_lag_bytes, self.slot_wal_status, reset_at = yield self._in_thread(
                self._look_blocking)
        except Exception as error:
            self.log.debug("Could not look at the relay's slot: {why}", why=first_line(error))
            self.slot_lag_bytes = self.slot_wal_status = None
            return
        self._saw_reset_at(reset_at)

    # -- taking the slot ----------------------------------------------------------

    @defer.inlineCallbacks
    def _attempt(self) -> Any:
        self._retry = None
        if not self.running:
            return
        try:
            dsn = yield dsnlib.when_known(self._dsn)
            dsn = dsnlib.for_connection(dsn, "partysense-live relay")
            self._connect_to = dsn
            if not self.slot:
                self.slot = yield self._in_thread(self._slot_name_blocking)
            taken, reset_at = yield self._in_thread(self._slot_taken_blocking)
            self._saw_reset_at(reset_at)  # known before this relay may make a slot
            if taken:
                # Asked on the SQL connection: a standby opens no replication
                # connection (one WAL sender, one backend) every few seconds.
                self._again("standby: another daemon relays the slot")
                return
            stream = WalStream(
                self._reactor, slot=self.slot, publication=PUBLICATIONS, temporary=False,
                on_transaction=self._take, on_lost=self._lost,
                on_created=lambda snapshot, lsn: self._in_thread(
                    self._reset_blocking, snapshot, lsn, timeout=RESET_DEADLINE
                ).addCallback(self._saw_reset_at))
            self._stream = stream
            yield stream.start(dsn)
        except SlotInvalidated as error:
            self.log.error("The relay's slot lost the WAL it needed ({why}): changes "
                           "committed since it was last read are gone. Making a new slot; "
                           "the change log starts over and clients get fresh snapshots.",
                           why=error)
            try:
                yield self._in_thread(self._drop_slot_blocking)
            except Exception as failed:
                self._again(f"cannot drop the invalidated slot: {first_line(failed)}")
                return
            self._again("slot invalidated, made again", at_once=True)
            return
        except psycopg2.errors.ObjectInUse:
            self._again("standby: another daemon relays the slot")
            return
        except Exception as error:
            self._again(f"cannot relay: {first_line(error)}")
            return
        if not self.running:
            self._drop_stream()
            return
        self.takeovers += 1
        self._set("relaying", "")
        self.log.info("Relaying the WAL to the change log (slot {slot}).", slot=self.slot)

    def _again(self, why: str, at_once: bool = False) -> None:
        self._drop_stream()
        if why != self.reason:
            self.log.info("WAL relay: {why}", why=why)
        self._set("standby" if why.startswith("standby") else "disconnected", why)
        if self.running:
            self._retry = self._reactor.callLater(0 if at_once else self._retry_delay,
                                                  self._attempt)

    def _lost(self, why: str) -> None:
        self.log.warn("The WAL relay lost its stream: {why}", why=why)
        self._again(f"stream lost: {why}")

    def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._pending = []
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        if stream is not None:
            stream.close()

    def _set(self, state: str, reason: str) -> None:
        self.state, self.reason = state, reason

    # -- writing ------------------------------------------------------------------

    def _take(self, transaction: Transaction) -> None:
        rows = [row for change in transaction.changes for row in log_rows(change)]
        self._pending.append((transaction.end_lsn, transaction.commit_time, rows))
        if not self._writing and self._soon is None:
            wait = self._last_write + BATCH_DELAY - self._reactor.seconds()
            self._soon = self._reactor.callLater(max(0.0, wait), self._write)

    @defer.inlineCallbacks
    def _write(self) -> Any:
        """Write pending transactions, a batch at a time; acknowledge each batch."""
        self._soon = None
        if self._writing:
            return
        self._writing = True
        try:
            while self._pending and self._stream is not None:
                stream, batch = self._stream, self._next_batch()
                rows = sum(len(entry[2]) for entry in batch)
                if rows:
                    self._last_write = self._reactor.seconds()
                    # Counted as the database wrote them: after a takeover, the
                    # first batches may be skipped as written already.
                    self.relayed += yield self._in_thread(self._write_blocking, batch)
                    self.batches += 1
                if stream is self._stream:
                    stream.acknowledge(batch[-1][0])
        except Exception as error:
            self.log.warn("The WAL relay could not write to the change log: {why}",
                          why=first_line(error))
            self._again(f"writing failed: {first_line(error)}")
        finally:
            self._writing = False

    def _next_batch(self) -> list[tuple[int, float, list[Row]]]:
        taken, rows = 0, 0
        while taken < len(self._pending) and (taken == 0 or rows < BATCH):
            rows += len(self._pending[taken][2])
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    def _in_thread(self, work: Callable[..., Any], *args: Any,
                   timeout: float = STATEMENT_DEADLINE) -> defer.Deferred[Any]:
        return self._worker.run(work, *args, timeout=timeout).addErrback(self._stuck)

    def _stuck(self, failure: Failure) -> Failure:
        """A statement past its deadline: its connection is silent. A new thread
        (with a connection of its own) serves from now on; the stuck one is left."""
        if failure.check(defer.TimeoutError):
            self.log.warn("The WAL relay's connection did not answer within its deadline; "
                          "connecting again.")
            self._worker.stop()
            self._worker = Worker(self._reactor, "partysense-relay")
            self._worker.start()
        return failure

    # -- in the relay's thread ------------------------------------------------------

    def _cursor(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None or connection.closed:
            connection = self._local.connection = psycopg2.connect(self._connect_to)
            connection.autocommit = True
        return connection.cursor()

    def _reset_blocking(self, snapshot: str, lsn: int) -> Any:
        """The tallies counted in the slot's snapshot, the log emptied; when (reset_at)."""
        with self._cursor() as cursor:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            try:
                cursor.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
                cursor.execute(RESET, (self.slot, format_lsn(lsn)))
                cursor.execute("SELECT reset_at FROM partysense_relay")
                reset_at = cursor.fetchone()[0]
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
        self.log.warn("The WAL relay made its slot at {lsn}: tallies counted again from "
                      "event_vote, change log emptied.", lsn=format_lsn(lsn))
        return reset_at

    def _write_blocking(self, batch: list[tuple[int, float, list[Row]]]) -> int:
        with self._cursor() as cursor:
            cursor.execute(WRITE, write_arguments(batch))
            return int(cursor.fetchone()[0])

    def _slot_name_blocking(self) -> str:
        with self._cursor() as cursor:
            cursor.execute(SLOT_QUERY, (SLOT_PREFIX,))
            return str(cursor.fetchone()[0])

    def _slot_taken_blocking(self) -> tuple[bool, Any]:
        """Is the slot streamed by another relay; when did the log last start over?"""
        with self._cursor() as cursor:
            cursor.execute(TAKEN, (self.slot,))
            active, reset_at = cursor.fetchone()
        return bool(active), reset_at

    def _look_blocking(self) -> tuple[int | None, str | None, Any]:
        with self._cursor() as cursor:
            cursor.execute(LOOK, (self.slot,))
            lag, wal_status, reset_at = cursor.fetchone()
        return lag, wal_status, reset_at

    def _drop_slot_blocking(self) -> None:
        with self._cursor() as cursor:
            cursor.execute("SELECT pg_drop_replication_slot(slot_name) FROM "
                           "pg_replication_slots WHERE slot_name = %s AND NOT active",
                           (self.slot,))

    def _close_blocking(self) -> None:
        connection, self._local.connection = getattr(self._local, "connection", None), None
        if connection is not None and not connection.closed:
            connection.close()
