"""A logical replication stream, read by the reactor: the WAL source's transport.

psycopg2's ``LogicalReplicationConnection`` in asynchronous mode, driven the
way txpostgres drives an ordinary connection: while connecting, creating the
slot and starting replication, ``poll()`` says whether to wait for the socket
to be readable or writable, and :class:`WalStream` registers itself with the
reactor for that (it is its own ``IReadDescriptor``/``IWriteDescriptor``);
once streaming, it stays a reader and drains ``read_message()`` on every
readable. Each payload goes through the pgoutput
:class:`~partysense.db.waldecoder.Decoder` and each committed transaction is
handed to ``on_transaction``, in commit order (the order of the WAL's commit
records: the slot decodes them in that order, whatever order the rows were
written in).

``acknowledge(lsn)`` tells PostgreSQL that everything up to ``lsn`` is done
with, so that the slot lets go of the WAL before it (psycopg2 sends it with
its next status update). A status update asking for an answer goes every
``probe_interval`` seconds, and a stream that has heard nothing for
``probe_timeout`` seconds (no keepalive, no data) is dropped: the same
bound on a silent connection as the listener's probe (docs/exactness.md §3).

Slots: ``temporary`` (the default) is dropped by PostgreSQL when the
connection ends, so it can never hold WAL for a daemon that is gone; a
permanent slot (created if missing) keeps the WAL from where it was last
acknowledged until a stream takes it again (docs/operations.md, "The WAL
source", says when that is worth its disk).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
from psycopg2 import sql
from psycopg2.extras import LogicalReplicationConnection
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from partysense.core.errors import first_line
from partysense.db.pgoutput import BadMessage
from partysense.db.waldecoder import Decoder, Transaction

# A slot's name: what PostgreSQL accepts (lower-case letters, digits, _), at most 63.
SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")


class SlotInvalidated(Exception):
    """The permanent slot lost the WAL it needed (max_slot_wal_keep_size): what was
    committed since it was last read is gone for good."""


@dataclass(frozen=True)
class Started:
    """Where the stream starts: the slot's consistent point (a new slot) or the
    position it had acknowledged (a permanent slot taken again)."""

    slot: str
    lsn: int
    created: bool


def parse_lsn(text: str) -> int:
    """PostgreSQL's text form of an LSN (``16/B374D848``) as an integer."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class WalStream:
    """One replication connection on one slot; see the module's docstring."""

    log = Logger()

    def __init__(self, reactor: Any, *, slot: str, publication: str,
                 on_transaction: Callable[[Transaction], None],
                 on_lost: Callable[[str], None], temporary: bool = True,
                 on_created: Callable[[str, int], defer.Deferred[None]] | None = None,
                 probe_interval: float = 3.0, probe_timeout: float = 7.0) -> None:
        if not SLOT_NAME.fullmatch(slot):
            raise ValueError(f"{slot!r} is not a slot name (a-z, 0-9, _; at most 63)")
        self._reactor = reactor
        self.slot = slot
        self._publication = publication
        self._temporary = temporary
        self._on_transaction = on_transaction
        self._on_lost = on_lost
        self._on_created = on_created
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._connection: Any = None
        self._cursor: Any = None
        self._polling: defer.Deferred[None] | None = None
        self._streaming = False
        self._probe: LoopingCall | None = None
        self._decoder = Decoder()
        self.last_heard = 0.0
        self.received_lsn = 0      # the server's WAL end, as it last said
        self.acknowledged_lsn = 0
        self.transactions = 0

    # -- starting -------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self, dsn: str) -> Any:
        """Connect, create (or take) the slot, start streaming; fires with Started.

        Fails with psycopg2's error when any step does (SlotInvalidated for a
        permanent slot that lost its WAL), leaving nothing open.
        """
        try:
            self._connection = psycopg2.connect(
                dsn, connection_factory=LogicalReplicationConnection, async_=True)
            yield self._poll()
            self._cursor = self._connection.cursor()
            created, lsn = yield self._create_slot()
            if not created:
                lsn = yield self._confirmed_position()
            self._cursor.start_replication(
                slot_name=self.slot, decode=False, start_lsn=lsn,
                options={"proto_version": "1", "publication_names": self._publication})
            yield self._poll()
        except Exception as error:
            self._close()
            if isinstance(error, psycopg2.errors.ObjectNotInPrerequisiteState) and \
                    "can no longer" in str(error):
                raise SlotInvalidated(first_line(error)) from None
            raise
        self._streaming = True
        self.last_heard = self._reactor.seconds()
        self._reactor.addReader(self)
        self._probe = LoopingCall(self._probe_once)
        self._probe.clock = self._reactor
        self._probe.start(self._probe_interval, now=False)
        return Started(self.slot, lsn, created)

    @defer.inlineCallbacks
    def _create_slot(self) -> Any:
        """(True, consistent point) for a new slot; (False, 0) when it exists.

        With ``on_created``, the new slot exports its snapshot (exactly what
        was committed before the slot's first change) and ``on_created(name,
        lsn)`` runs before streaming starts: the snapshot lasts until the
        replication connection's next command.
        """
        words = "TEMPORARY LOGICAL pgoutput" if self._temporary else "LOGICAL pgoutput"
        words += " EXPORT_SNAPSHOT" if self._on_created else " NOEXPORT_SNAPSHOT"
        try:
            self._cursor.execute(sql.SQL("CREATE_REPLICATION_SLOT {} " + words).format(
                sql.Identifier(self.slot)))
            yield self._poll()
        except psycopg2.errors.DuplicateObject:
            if self._temporary:
                raise
            return False, 0
        row = self._cursor.fetchone()
        lsn = parse_lsn(row[1])
        if self._on_created is not None:
            yield self._on_created(row[2], lsn)
        return True, lsn

    @defer.inlineCallbacks
    def _confirmed_position(self) -> Any:
        """A permanent slot's acknowledged position: its replay starts there. (A
        logical replication connection also answers SQL.)"""
        self._cursor.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                             "WHERE slot_name = %s", (self.slot,))
        yield self._poll()
        row = self._cursor.fetchone()
        return parse_lsn(row[0]) if row and row[0] else 0

    # -- the reactor's side ---------------------------------------------------

    def fileno(self) -> int:
        connection = self._connection
        if connection is None or connection.closed:
            return -1
        return int(connection.fileno())

    def logPrefix(self) -> str:
        return "partysense-wal"

    def doRead(self) -> None:
        if self._polling is not None:
            self._continue_polling()
        elif self._streaming:
            self._drain()

    def doWrite(self) -> None:
        if self._polling is not None:
            self._continue_polling()

    def connectionLost(self, reason: Failure) -> None:
        self._lose(f"the replication connection closed: {reason.getErrorMessage()}")

    # -- polling (connect, slot, start) ---------------------------------------

    def _poll(self) -> defer.Deferred[None]:
        self._polling = defer.Deferred()
        waiting = self._polling
        self._continue_polling()
        return waiting

    def _continue_polling(self) -> None:
        waiting = self._polling
        assert waiting is not None
        self._reactor.removeReader(self)
        self._reactor.removeWriter(self)
        try:
            state = self._connection.poll()
        except Exception as error:
            self._polling = None
            waiting.errback(error)
            return
        if state == ext.POLL_OK:
            self._polling = None
            waiting.callback(None)
        elif state == ext.POLL_READ:
            self._reactor.addReader(self)
        elif state == ext.POLL_WRITE:
            self._reactor.addWriter(self)

    # -- streaming ------------------------------------------------------------

    def _drain(self) -> None:
        """Every message the socket has: decoded, whole transactions handed on."""
        while self._streaming:
            try:
                message = self._cursor.read_message()
            except psycopg2.Error as error:
                self._lose(f"the replication stream failed: {first_line(error)}")
                return
            self.last_heard = self._reactor.seconds()
            self.received_lsn = max(self.received_lsn, int(self._cursor.wal_end))
            if message is None:
                return
            try:
                transaction = self._decoder.feed(message.payload)
            except BadMessage as error:
                self.log.error("Not a pgoutput message ({why}): {payload!r}", why=error,
                               payload=bytes(message.payload[:100]))
                self._lose(f"a message that does not parse: {error}")
                return
            if transaction is not None:
                self.transactions += 1
                self._on_transaction(transaction)

    def acknowledge(self, lsn: int) -> None:
        """Everything up to ``lsn`` (a commit's end_lsn) is done with: the slot may
        let its WAL go. Sent with psycopg2's next status update."""
        if not self._streaming or lsn <= self.acknowledged_lsn:
            return
        self.acknowledged_lsn = lsn
        try:
            self._cursor.send_feedback(flush_lsn=lsn)
        except psycopg2.Error as error:
            self._lose(f"acknowledging failed: {first_line(error)}")

    def acknowledge_received(self) -> None:
        """Everything received is done with (the caller has handed on every
        transaction): acknowledge up to the server's last reported position, past
        WAL that carried nothing of the publication (the database's other
        writes), which the slot would otherwise keep. Not inside a transaction:
        its Commit, still to come, is before that position."""
        if not self._decoder.inside:
            self.acknowledge(self.received_lsn)

    def _probe_once(self) -> None:
        """Ask for an answer; drop a stream that has said nothing for too long."""
        if not self._streaming:
            return
        silent = self._reactor.seconds() - self.last_heard
        if silent > self._probe_timeout:
            self._lose(f"the replication stream was silent for {silent:.1f} s")
            return
        try:
            self._cursor.send_feedback(reply=True)
        except psycopg2.Error as error:
            self._lose(f"the replication stream failed: {first_line(error)}")

    # -- ending ---------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (a temporary slot goes with it); no on_lost."""
        self._streaming = False
        self._close()

    def _lose(self, why: str) -> None:
        if not self._streaming:
            return
        self._streaming = False
        self._close()
        self._on_lost(why)

    def _close(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None and probe.running:
            probe.stop()
        self._reactor.removeReader(self)
        self._reactor.removeWriter(self)
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            connection.close()
