"""The one PostgreSQL connection that LISTENs on behalf of every client.

The service keeps the set of channels that have subscribers and makes its
connection LISTEN to exactly those. Keeping the connection alive (deadlines,
probe, backoff) is :class:`~partysense.pgservice.PostgresService`'s job;
what this module adds is the LISTEN lifecycle: after every (re)connect it
LISTENs again and replays from the change log what was committed while it
was away, so observers see every change once, in commit order.
Notifications carry a ``seq`` that follows commit order (sql/install.sql);
that number is what makes the replay exact (docs/exactness.md).

Each notification is parsed here, once, into a :class:`~partysense.change.Change`;
a payload that is not one of our changes goes no further.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from psycopg2 import sql
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from partysense import changelog
from partysense.adapters.txpostgres_adapter import PgConnection
from partysense.change import BadChange, Change, parse_change
from partysense.channels import FIREHOSE, carries, channel_event, event_channel
from partysense.dsn import DSNSource
from partysense.pgservice import NotConnected, PostgresService, describe_error

# Handed every change, with the channel it came on.
Observer = Callable[[str, Change], None]

REPLAY_PAGE = 5000


class ListenerService(PostgresService):
    """Keeps one LISTEN connection alive and hands each change to its observers."""

    def __init__(self, dsn: DSNSource, reactor: IReactorTime, **options: Any) -> None:
        super().__init__(dsn, reactor, role="listener", application_name="partysense-live",
                         **options)
        self._observers: list[Observer] = []
        self._wanted: set[str] = set()
        self._listening: set[str] = set()
        # Per channel, the last seq handed on: the replay and the live
        # stream overlap after a reconnect, and this drops the overlap.
        self._channel_seq: dict[str, int] = {}
        self.last_seq: int | None = None
        self._syncing = False
        self._catching_up = False
        self._buffer: list[tuple[str, str]] = []
        self._listen_waiters: dict[str, list[defer.Deferred[None]]] = {}
        self.notifications = 0
        self.replayed = 0
        self.bad_notifications = 0

    def observe(self, observer: Observer) -> None:
        """Hand every change to ``observer`` too, after those registered before."""
        self._observers.append(observer)

    # -- what the hub asks for ------------------------------------------------

    def listen(self, channel: str) -> None:
        """Make sure ``channel`` is LISTENed (now, or as soon as connected)."""
        self._wanted.add(channel)
        self._sync()

    def unlisten(self, channel: str) -> None:
        """Stop listening to ``channel`` once its last subscriber has gone."""
        self._wanted.discard(channel)
        if channel not in self._listening:
            # Its last subscriber left before its LISTEN: nobody is waiting
            # for it any more, and no LISTEN will come to fire the waiters.
            for waiter in self._listen_waiters.pop(channel, []):
                waiter.errback(NotConnected(f"{channel} is no longer wanted"))
        self._sync()

    @property
    def channels(self) -> frozenset[str]:
        """The channels LISTENed on the current connection."""
        return frozenset(self._listening)

    def whenListening(self, channel: str) -> defer.Deferred[None]:
        """Fires once ``channel`` is LISTENed on the current connection.

        Fails with NotConnected when there is no connection (or it is lost
        first). A snapshot taken after this fires misses nothing: every
        later commit on the channel will be notified.
        """
        if not self.connected:
            return defer.fail(NotConnected(self.reason))
        if channel in self._listening:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._listen_waiters.setdefault(channel, []).append(waiter)
        self._sync()
        return waiter

    # -- a new connection -----------------------------------------------------

    def _prepare(self, connection: PgConnection) -> defer.Deferred[None]:
        connection.addNotifyObserver(partial(self._on_notify, connection))
        return self._resume(connection)

    def _ready(self) -> None:
        self.log.info(
            "Listener connected; {count} channels listened, caught up to seq {seq}.",
            count=len(self._listening), seq=self.last_seq,
        )
        self._sync()

    def _forget(self, why: str) -> None:
        self._listening = set()
        waiters, self._listen_waiters = self._listen_waiters, {}
        for channel_waiters in waiters.values():
            for waiter in channel_waiters:
                waiter.errback(NotConnected(why))

    @defer.inlineCallbacks
    def _resume(self, connection: PgConnection) -> Any:
        """LISTEN again and replay what was committed while we were away."""
        self._catching_up = True
        self._listening = set()
        for channel in list(self._channel_seq):
            if channel not in self._wanted:
                del self._channel_seq[channel]
        try:
            for channel in sorted(self._wanted):
                # Set before LISTEN is sent: a notification may arrive with
                # the LISTEN's own answer, and it must not be taken for old.
                self._channel_seq.setdefault(channel, self.last_seq or 0)
                yield self._step(connection, connection.runOperation(_listen(channel)))
                self._listened(channel)
            rows = yield self._step(connection, connection.runQuery(changelog.BOUNDS_QUERY))
            oldest, newest = rows[0]
            if self.last_seq is None or not self._listening:
                # Nobody to replay for: start from the newest change.
                self.last_seq = newest
            elif newest < self.last_seq:
                self._log_went_back(newest)
            else:
                if oldest > self.last_seq + 1:
                    self.log.warn(
                        "The change log now starts at seq {oldest}, after seq {seq} that the "
                        "listener had reached: changes committed during the outage may have "
                        "been trimmed (an outage longer than --retention?).",
                        oldest=oldest, seq=self.last_seq)
                yield self._catch_up(connection)
            buffered, self._buffer = self._buffer, []
            for channel, payload in buffered:
                self._dispatch(channel, payload)
        finally:
            self._catching_up = False
            self._buffer = []

    def _log_went_back(self, newest: int) -> None:
        """The database's change log ends before what we saw: start over from it.

        A restore from backup, a failover to a standby that had not received
        the last commits, or a reinstall. Without this, every new change
        (numbered from the lower seq again) would be dropped as already seen.
        """
        self.log.warn(
            "The change log ends at seq {newest}, before seq {seq} that the listener had "
            "already seen (database restored or failed over?); nothing can be replayed, "
            "counting again from {newest}.", newest=newest, seq=self.last_seq)
        self.last_seq = newest
        for channel in self._channel_seq:
            # Whatever arrives now was committed after our LISTEN: all new.
            self._channel_seq[channel] = 0

    @defer.inlineCallbacks
    def _catch_up(self, connection: PgConnection) -> Any:
        """Replay, page by page, every change after ``last_seq`` on our channels."""
        events = None if FIREHOSE in self._listening else [
            event for event in map(channel_event, self._listening) if event is not None]
        replayed = 0
        while True:
            params = changelog.replay_params(self.last_seq or 0, events, REPLAY_PAGE)
            rows = yield self._step(
                connection, connection.runQuery(changelog.REPLAY_QUERY, params))
            for change in changelog.parse_rows(rows):
                self._replay(change)
            replayed += len(rows)
            if len(rows) < REPLAY_PAGE:
                break
        if replayed:
            self.log.info(
                "Replayed {count} changes committed while the listener was away.",
                count=replayed,
            )

    def _replay(self, change: Change) -> None:
        for channel in (event_channel(change.event_id), FIREHOSE):
            if channel in self._listening:
                self.replayed += 1
                self._dispatch_change(channel, change)
        self.last_seq = max(self.last_seq or 0, change.seq)

    # -- keeping LISTEN in step with the subscribers --------------------------

    @defer.inlineCallbacks
    def _sync(self) -> Any:
        if self._syncing or self._catching_up or not self.connected:
            return
        self._syncing = True
        try:
            while self.connected and self._connection is not None:
                connection = self._connection
                to_listen = sorted(self._wanted - self._listening)
                to_unlisten = sorted(self._listening - self._wanted)
                if not to_listen and not to_unlisten:
                    break
                for channel in to_listen:
                    # Before LISTEN is sent, as in _resume.
                    self._channel_seq[channel] = self.last_seq or 0
                    yield self._watch(connection.runOperation(_listen(channel)), connection)
                    self._listened(channel)
                for channel in to_unlisten:
                    # Not listening from now: a new subscriber's whenListening
                    # must wait for the LISTEN that follows, not snapshot
                    # between this UNLISTEN and that LISTEN.
                    self._listening.discard(channel)
                    yield self._watch(connection.runOperation(
                        sql.SQL("UNLISTEN {}").format(sql.Identifier(channel))), connection)
                    if channel not in self._wanted:
                        self._channel_seq.pop(channel, None)
        except Exception as error:
            self.log.warn("LISTEN/UNLISTEN failed: {why}", why=describe_error(error))
        finally:
            self._syncing = False

    def _listened(self, channel: str) -> None:
        self._listening.add(channel)
        for waiter in self._listen_waiters.pop(channel, []):
            waiter.callback(None)

    # -- notifications --------------------------------------------------------

    def _on_notify(self, connection: PgConnection, notify: Any) -> None:
        if connection is not self._connection:
            return  # a late read from a connection already given up
        if self._catching_up:
            self._buffer.append((notify.channel, notify.payload))
        else:
            self._dispatch(notify.channel, notify.payload)

    def _dispatch(self, channel: str, payload: str) -> None:
        try:
            change = parse_change(payload)
            if not carries(channel, change.event_id):
                raise BadChange(f"a change of event {change.event_id} on {channel}")
        except BadChange as error:
            self.bad_notifications += 1
            self.log.warn(
                "Ignored a notification on {channel} that is not a vote change ({why}): "
                "{payload!r}", channel=channel, why=str(error), payload=payload[:200],
            )
            return
        # Only channels LISTENed (or being LISTENed) on this connection have
        # an entry; a notification can arrive in the same read as the answer
        # to its LISTEN, before _listening says so.
        if channel in self._channel_seq:
            self._dispatch_change(channel, change)
        self.last_seq = max(self.last_seq or 0, change.seq)

    def _dispatch_change(self, channel: str, change: Change) -> None:
        if change.seq <= self._channel_seq.get(channel, 0):
            return  # already delivered: the replay and the live stream overlap
        self._channel_seq[channel] = change.seq
        self.notifications += 1
        for observer in self._observers:
            try:
                observer(channel, change)
            except Exception:
                self.log.failure("Delivering change {seq} on {channel} failed",
                                 seq=change.seq, channel=channel)


def _listen(channel: str) -> sql.Composed:
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel))
