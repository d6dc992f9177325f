"""The one PostgreSQL connection that LISTENs on behalf of every client.

The service keeps the set of channels that have subscribers and makes its
connection LISTEN to exactly those. Keeping the connection alive (deadlines,
probe, backoff) is the job of the :class:`~partysense.db.pgservice.PostgresService`
it holds, handed what a new connection must do first (LISTEN, catch up); this
module is the LISTEN lifecycle and how changes come in. Which channels are
listened, and from which seq, is partysense/db/listened.py's bookkeeping.

A notification is believed only when it is signed (any role may NOTIFY):
one that checks out *is* the change, handed on with no read of the change
log; partysense/db/arrivals.py decides, and counts the forgeries.

The change log (``partysense_change``, which only our triggers write) is read
only to catch up: after a reconnect, and after the listener had to drop
notifications it could not hold. Notifications arrive in commit order and
``seq`` follows commit order (docs/exactness.md), so a signed change past the
last one handed on is the next one, and "after the last one handed on" is
exact for the reads. While a statement of the work loop runs (a LISTEN, a
read), notifications wait in arrival order, so that nothing is handed on
before what the statement brings.

Without the keys (an older install, or no grant), notifications are a
doorbell as they were before signatures: each makes the listener read the
log, and what it said is checked against the rows (partysense/db/doorbell.py).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from psycopg2 import sql
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from partysense.core.change import Change
from partysense.core.channels import FIREHOSE, channel_event, event_channel
from partysense.core.interfaces import Observer, Relay
from partysense.db import changelog
from partysense.db.arrivals import Arrivals
from partysense.db.doorbell import Doorbell
from partysense.db.dsn import DSNSource
from partysense.db.fanout import Fanout
from partysense.db.keys import REFRESH, SigningKeys
from partysense.db.listened import ListenedChannels
from partysense.db.pgservice import PostgresService, describe_error
from partysense.db.txpostgres_adapter import PgConnection

# Changes read at a time: a page's changes, their frames and their claims are
# all in memory at once (a burst of 8,000 votes read as one page once cost
# 35 MB).
REPLAY_PAGE = 500


class ListenerService(Service):
    """Keeps one LISTEN connection alive and hands each logged change to its observers.

    The first :class:`~partysense.core.interfaces.ChangeSource`: the doorbell
    (LISTEN/NOTIFY) and the change log.
    """

    log = Logger()

    def __init__(self, dsn: DSNSource, reactor: IReactorTime, key_refresh: float = REFRESH,
                 **options: Any) -> None:
        self._keeper = PostgresService(
            dsn, reactor, role="listener", application_name="partysense-live",
            prepare=self._prepare, on_connected=self._ready, on_down=self._forget,
            log=self.log, **options)
        self._fanout = Fanout(self.log)
        self._channels = ListenedChannels()
        self.last_seq: int | None = None  # the newest change handed on (or read)
        self._syncing = False   # the work loop (LISTEN/UNLISTEN, reads) is running
        self._resuming = False  # a new connection's first statements are running
        self._rung = False      # read the log (a doorbell rang, or changes were dropped)
        self._keys = SigningKeys()
        self._keys_due = False  # read the keys again at the work loop's next turn
        # Reads the keys every key_refresh seconds while connected (a new one
        # for every connection, so that nothing is scheduled while down).
        self._key_timer: task.LoopingCall | None = None
        self._reactor = reactor
        self._key_refresh = key_refresh
        self._doorbell = Doorbell()
        self._arrivals = Arrivals(
            self._keys, self._doorbell, self.log, reactor, hand_on=self._hand_on,
            ring=self._ring, holding=lambda: self._syncing or self._resuming,
            last_seq=lambda: self.last_seq)
        self.notifications = 0
        self.replayed = 0
        self.reads = 0
        self.relay: Relay | None = None  # the listen mode has none

    # -- the connection ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._keeper.startService()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stop_key_timer()
        return self._keeper.stopService()

    @property
    def bad_notifications(self) -> int:
        """Notifications that were not a change of ours (forged, unsigned, misplaced)."""
        return self._arrivals.bad

    @property
    def signed(self) -> bool:
        """Signed notifications are believed (False: the doorbell mode, docs/security.md)."""
        return self._keys.signed

    @property
    def connected(self) -> bool:
        return self._keeper.connected

    @property
    def state(self) -> str:
        return self._keeper.state

    @property
    def reason(self) -> str:
        return self._keeper.reason

    @property
    def reconnects(self) -> int:
        return self._keeper.reconnects

    def whenConnected(self) -> defer.Deferred[None]:
        """Fires once connected and LISTENing (see PostgresService.whenConnected)."""
        return self._keeper.whenConnected()

    def whenAvailable(self) -> defer.Deferred[None]:
        """Fires once connected, within --grace (see PostgresService.whenAvailable)."""
        return self._keeper.whenAvailable()

    def runQuery(self, query: Any, params: Any = None) -> defer.Deferred[list[tuple]]:
        """One query on the LISTEN connection itself (PostgresService.runQuery)."""
        return self._keeper.runQuery(query, params)

    def observe(self, observer: Observer) -> None:
        """Hand every change to ``observer`` too, after those registered before."""
        self._fanout.observers.append(observer)

    def before_batch(self, callback: Callable[[int], None]) -> None:
        """Call ``callback`` with the number of notifications of each batch,
        before any of them is handed on."""
        self._fanout.before.append(callback)

    def after_batch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each batch of notifications has been handed on."""
        self._fanout.after.append(callback)

    def on_start_over(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the log no longer continues what was handed on."""
        self._fanout.start_over.append(callback)

    # -- what the hub asks for ------------------------------------------------

    def listen(self, channel: str) -> None:
        """Make sure ``channel`` is LISTENed (now, or as soon as connected)."""
        self._channels.want(channel)
        self._work()

    def unlisten(self, channel: str) -> None:
        """Stop listening to ``channel`` once its last subscriber has gone."""
        self._channels.unwant(channel)
        self._work()

    @property
    def channels(self) -> frozenset[str]:
        """The channels LISTENed on the current connection."""
        return frozenset(self._channels.listening)

    def complete_after(self, channel: str, seq: int) -> bool:
        """Every change on ``channel`` after ``seq`` is yet to be handed on: LISTENed
        from a floor at or before ``seq``, nothing after ``seq`` read (reads go in
        seq order). What a client was sent up to ``seq`` is then all it needs
        from the log (partysense/reads/sharedreads.py)."""
        return self.connected and self._channels.from_floor(channel, seq, self.last_seq or 0)

    def listening_from(self, channel: str, seq: int) -> bool:
        """``channel`` is LISTENed on the current connection, without a break,
        from a floor at or before ``seq``: each of its changes after ``seq``
        is handed on (in seq order, to every observer), whenever it is read."""
        return self.connected and self._channels.without_break(channel, seq)

    def whenListening(self, channel: str) -> defer.Deferred[None]:
        """Fires once ``channel`` is LISTENed on the current connection.

        Fails with NotConnected when there is no connection (or it is lost
        first). A snapshot taken after this fires misses nothing: every
        later commit on the channel will be read and handed on.
        """
        if not self.connected:
            # Connecting (within --grace): LISTENed as soon as connected.
            return self.whenAvailable().addCallback(lambda _: self.whenListening(channel))
        if channel in self._channels.listening:
            return defer.succeed(None)
        waiter = self._channels.wait(channel)
        self._work()
        return waiter

    # -- what a new connection does first, and when it is gone ------------------

    def _prepare(self, connection: PgConnection) -> defer.Deferred[None]:
        connection.addNotifyObserver(partial(self._on_notify, connection))
        connection.before_notifications.append(self._fanout.batch_starts)
        connection.after_notifications.append(self._fanout.batch_done)
        return self._resume(connection)

    def _ready(self) -> None:
        self.log.info(
            "Listener connected; {count} channels listened, caught up to seq {seq}.",
            count=len(self._channels.listening), seq=self.last_seq,
        )
        self._stop_key_timer()
        self._key_timer = task.LoopingCall(self._refresh_keys)
        self._key_timer.clock = self._reactor
        self._key_timer.start(self._key_refresh, now=False)
        self._work()

    def _stop_key_timer(self) -> None:
        if self._key_timer is not None and self._key_timer.running:
            self._key_timer.stop()
        self._key_timer = None

    def _forget(self, why: str) -> None:
        self._stop_key_timer()
        self._doorbell.forget()
        self._arrivals.forget()
        self._channels.lost(why)

    @defer.inlineCallbacks
    def _resume(self, connection: PgConnection) -> Any:
        """LISTEN again and read what was committed while we were away."""
        self._resuming = True
        try:
            yield self._keys.refresh(partial(self._resume_query, connection))
            yield self._catch_up(connection)
        finally:
            self._resuming = False
        self._arrivals.release()

    def _resume_query(self, connection: PgConnection, query: str) -> defer.Deferred[Any]:
        return self._keeper.step(connection, self._query_on(connection, query))

    def _query_on(self, connection: PgConnection, query: str) -> defer.Deferred[Any]:
        return self._keeper.watch(connection.runQuery(query), connection)

    @defer.inlineCallbacks
    def _catch_up(self, connection: PgConnection) -> Any:
        self._channels.new_connection()
        rows = yield self._keeper.step(connection, connection.runQuery(changelog.BOUNDS_QUERY))
        oldest, newest = rows[0]
        if self.last_seq is None:
            self.last_seq = newest  # a first start: nothing to replay
        elif newest < self.last_seq:
            self._log_went_back(newest)
        elif oldest > self.last_seq + 1:
            self.log.warn(
                "The change log now starts at seq {oldest}, after seq {seq} that the "
                "listener had reached: changes committed during the outage may have "
                "been trimmed (an outage longer than --retention?).",
                oldest=oldest, seq=self.last_seq)
        for channel in sorted(self._channels.wanted):
            # A channel listened before keeps its floor: what it missed is read
            # below. A new one starts at the log's end before its LISTEN.
            self._channels.keep_floor(channel, newest)
            yield self._keeper.step(connection, connection.runOperation(_listen(channel)))
            self._channels.listened(channel)
        handed_on = self.notifications
        while (yield self._keeper.step(connection, self._read(connection))):
            pass
        self.replayed += self.notifications - handed_on

    def _log_went_back(self, newest: int) -> None:
        """The database's change log ends before what we saw: start over from it.

        A restore from backup, a failover to a standby that had not received
        the last commits, or a reinstall. Without this, every new change
        (numbered from the lower seq again) would be taken as already read.
        """
        self.log.warn(
            "The change log ends at seq {newest}, before seq {seq} that the listener had "
            "already seen (database restored or failed over?); nothing can be replayed, "
            "counting again from {newest}.", newest=newest, seq=self.last_seq)
        self.last_seq = newest
        self._channels.lower_floors(newest)
        self._doorbell.clear_recent()
        self._fanout.started_over()

    # -- the work loop: LISTEN/UNLISTEN and reads, one statement at a time ----

    @defer.inlineCallbacks
    def _work(self) -> Any:
        """Keep LISTEN in step with the subscribers, and read the log when rung.

        One loop does both, so that a read always asks for the channels
        LISTENed at that moment: a read that raced a LISTEN could skip the
        new channel's first changes.
        """
        if self._syncing or not self.connected:
            return
        self._syncing = True
        try:
            while self.connected and self._keeper.connection is not None:
                connection = self._keeper.connection
                to_listen = self._channels.to_listen()
                to_unlisten = self._channels.to_unlisten()
                if to_listen:
                    # The LISTENs, then the log's end: what commits after that
                    # read is past it, and notified to us; what committed
                    # before is in any snapshot taken after it. (Read before
                    # the LISTENs, a change committed in between would be past
                    # it and never notified.)
                    for channel in to_listen:
                        yield self._keeper.watch(
                            connection.runOperation(_listen(channel)), connection)
                    rows = yield self._query_on(connection, changelog.BOUNDS_QUERY)
                    for channel in to_listen:
                        self._channels.listened(channel, floor=rows[0][1])
                elif to_unlisten:
                    for channel in to_unlisten:
                        self._channels.unlistening(channel)
                        yield self._keeper.watch(connection.runOperation(
                            sql.SQL("UNLISTEN {}").format(sql.Identifier(channel))), connection)
                elif self._rung:
                    self._rung = False
                    if (yield self._keeper.watch(self._read(connection), connection)):
                        self._rung = True  # a full page: there is more
                elif self._keys_due:
                    self._keys_due = False
                    yield self._keys.refresh(partial(self._query_on, connection))
                else:
                    break
                self._arrivals.release()
        except Exception as error:
            self.log.warn("LISTEN/UNLISTEN or reading the change log failed: {why}",
                          why=describe_error(error))
        finally:
            self._syncing = False
        self._arrivals.release()

    def _refresh_keys(self) -> None:
        self._keys_due = True
        self._work()

    @defer.inlineCallbacks
    def _read(self, connection: PgConnection) -> Any:
        """Read one page of changes after ``last_seq`` on our channels; True if full."""
        claims = self._doorbell.take_claims()
        self._arrivals.reading()
        listening = self._channels.listening
        if not listening:
            return False
        events = None if FIREHOSE in listening else [
            event for event in map(channel_event, listening) if event is not None]
        params = changelog.replay_params(self.last_seq or 0, events, REPLAY_PAGE)
        rows = yield connection.runQuery(changelog.REPLAY_QUERY, params)
        self.reads += 1
        for change in changelog.parse_rows(rows):
            self._doorbell.read(change)
            self._hand_on(change)
        full = len(rows) == REPLAY_PAGE
        for channel, why, start in self._doorbell.forgeries(
                claims, full, self._channels.listening):
            self._arrivals.forged(channel, why, start)
        return full

    def _hand_on(self, change: Change) -> None:
        self.last_seq = max(self.last_seq or 0, change.seq)
        for channel in (event_channel(change.event_id), FIREHOSE):
            if self._channels.passes(channel, change.seq):
                self.notifications += 1
                self._fanout.hand(channel, change)

    # -- notifications --------------------------------------------------------

    def _on_notify(self, connection: PgConnection, notify: Any) -> None:
        channel = notify.channel
        if connection is not self._keeper.connection or (
                channel not in self._channels.wanted and channel not in self._channels.listening):
            return  # a late read from a connection given up, or a channel we dropped
        self._arrivals.arrive(channel, notify.payload)

    def _ring(self) -> None:
        """Read the log at the work loop's next turn."""
        self._rung = True
        self._work()


def _listen(channel: str) -> sql.Composed:
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel))
