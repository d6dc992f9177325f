"""The one PostgreSQL connection that LISTENs on behalf of every client.

The service keeps the set of channels that have subscribers and makes the
connection LISTEN to exactly those. When the connection is lost (backend
killed, server restarted, network silently dead, server down at start) it
reconnects with capped, jittered backoff, LISTENs again, and replays from the
change log what was committed while it was away, so subscribers see every
change once, in commit order. Notifications carry a ``seq`` that follows
commit order (sql/install.sql); that number is what makes the replay exact
(docs/exactness.md).

How a loss is noticed: a killed backend or a restarted server closes the
socket (seen at once); a connection that goes silent without closing is
caught by a probe query with a deadline (every ``probe_interval`` seconds,
``probe_timeout`` to answer) and, where packets stop being acknowledged, by
TCP keepalives (partysense/dsn.py). Every step of connecting has a deadline
too: txpostgres' connect() has none of its own.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import txpostgres

from partysense import dsn as dsnlib

FIREHOSE = "firehose"

# Delivered for every change: (channel, seq, payload text from the trigger).
Deliver = Callable[[str, int, str], None]

# Resolves a host name to its addresses without blocking the reactor.
Resolve = Callable[[str, int], defer.Deferred[list[str]]]

_REPLAY_SELECT = """
    SELECT c.seq, c.event_id,
           partysense_payload(c.seq, c.op, c.vote_id, c.event_id, e.title, c.track_id,
                              m.name, m.artist, c.up, c.prev_up, false, c.committed_at)
    FROM partysense_change c
    LEFT JOIN event_event e ON e.id = c.event_id
    LEFT JOIN music_view m ON m.id = c.track_id
"""

# Replayed a page at a time: paging by seq is exact because seq follows
# commit order, so no change can appear later below a page already read.
CATCH_UP_QUERY = _REPLAY_SELECT + """
    WHERE c.seq > %(after)s
    ORDER BY c.seq LIMIT %(limit)s
"""

CATCH_UP_EVENTS_QUERY = _REPLAY_SELECT + """
    WHERE c.seq > %(after)s AND c.event_id = ANY(%(events)s)
    ORDER BY c.seq LIMIT %(limit)s
"""

LOG_BOUNDS_QUERY = "SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM partysense_change"

# Trimmed in batches, oldest first, so that one pass never holds the shared
# connection long enough to starve the probe. The newest change is never
# deleted: a v2 snapshot's cursor is max(seq), and an empty log would make
# every cursor look too old to resume from.
TRIM_QUERY = """
    WITH doomed AS (
        SELECT seq FROM partysense_change
        WHERE committed_at < now() - %(keep)s * interval '1 second'
          AND seq < (SELECT max(seq) FROM partysense_change)
        ORDER BY committed_at
        LIMIT %(batch)s
    ), trimmed AS (
        DELETE FROM partysense_change c USING doomed d WHERE c.seq = d.seq RETURNING 1
    ) SELECT count(*) FROM trimmed
"""

REPLAY_PAGE = 5000
TRIM_BATCH = 5000


class NotConnected(Exception):
    """The listener has no database connection right now."""


def event_channel(event_id: int) -> str:
    """The channel of one event. Only ever built from a validated integer."""
    if type(event_id) is not int or event_id <= 0:
        raise ValueError(f"event id must be a positive integer, not {event_id!r}")
    return f"event_{event_id}"


def channel_event(channel: str) -> int | None:
    """The event id of an ``event_<id>`` channel; None for the firehose."""
    prefix = "event_"
    return int(channel[len(prefix):]) if channel.startswith(prefix) else None


def parse_seq(payload: str) -> int | None:
    """The change's seq, or None for a payload that is not one of our changes."""
    try:
        seq = json.loads(payload)["seq"]
    except (ValueError, TypeError, KeyError):
        return None
    return seq if type(seq) is int else None


def default_backoff() -> Callable[[int], float]:
    """Seconds to wait before retry ``attempt`` (0, 1, ...): 0.25 s doubling to 10 s.

    Plus up to half a second of jitter, so that many daemons cut off by one
    database restart do not all knock at the same instant.
    """
    return backoffPolicy(initialDelay=0.25, maxDelay=10.0, factor=2.0,
                         jitter=lambda: random.uniform(0.0, 0.5))


def resolve_in_thread(reactor: Any) -> Resolve:
    """A resolver that runs getaddrinfo in the reactor's thread pool."""

    def resolve(host: str, port: int) -> defer.Deferred[list[str]]:
        def lookup() -> list[str]:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            return list(dict.fromkeys(str(info[4][0]) for info in infos))

        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), lookup)

    return resolve


def needs_resolving(params: dict[str, str]) -> str | None:
    """The host name libpq would look up itself (blocking), or None."""
    host = params.get("host", "")
    if not host or "hostaddr" in params or "," in host or host.startswith(("/", "@")):
        return None  # no host, already an address, several hosts, or a Unix socket
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


@defer.inlineCallbacks
def with_resolved_host(dsn: str, resolve: Resolve) -> Any:
    """The DSN with ``hostaddr`` set from a lookup done off the reactor thread.

    libpq resolves host names synchronously, which would freeze every client
    for as long as DNS takes. ``host`` stays as it was: TLS verification,
    SNI and ~/.pgpass matching use it. Every address is kept (the host name
    repeated once per address) so libpq still tries them in turn.
    """
    params = parse_dsn(dsn)
    host = needs_resolving(params)
    if host is None:
        return dsn
    port = params.get("port") or "5432"
    try:
        addresses = yield resolve(host, int(port))
    except Exception as error:
        raise OSError(f"could not resolve host {host!r}: {error}") from None
    if not addresses:
        raise OSError(f"could not resolve host {host!r}: no address")
    return make_dsn(dsn, host=",".join([host] * len(addresses)), hostaddr=",".join(addresses))


class _Immediately:
    """A stand-in for txpostgres' Cooperator that runs observers at once.

    The default Cooperator interleaves notification batches, which can
    reorder them; commit order is the one thing we must keep.
    """

    def cooperate(self, iterator: Any) -> None:
        for _ in iterator:
            pass


class _Cursor(txpostgres.Cursor):
    def execute(self, query: Any, params: Any = None) -> defer.Deferred[Any]:
        if query == "rollback" and self._connection.pollable().closed:
            # An interaction cut off by a lost connection: there is nothing to
            # roll back, and txpostgres would log the failed ROLLBACK as an
            # "Unhandled Error". The interaction's own failure still goes to
            # its caller (and _watch).
            return defer.succeed(self)
        return super().execute(query, params)


class _Connection(txpostgres.Connection):
    """A txpostgres connection that reports its loss once, and closes cleanly."""

    cursorFactory = _Cursor

    def __init__(self, reactor: Any, on_lost: Callable[[str], None]) -> None:
        super().__init__(reactor=reactor, cooperator=_Immediately())
        self._on_lost: Callable[[str], None] | None = on_lost
        self._closing = False
        self.answered_at = 0.0  # when a query last got its answer (the probe's sign of life)

    def cursorFinished(self, cursor: Any) -> None:
        self.answered_at = self.reactor.seconds()
        super().cursorFinished(cursor)

    def doRead(self) -> None:
        try:
            super().doRead()
        except psycopg2.Error as error:
            self.drop(_describe_error(error))

    def connectionLost(self, reason: Any) -> None:
        connecting = self._pollingD is not None
        super().connectionLost(reason)
        if connecting and self._pollingD is None:
            # Lost while connecting: txpostgres has handed psycopg2's own error
            # ("Connection refused", "password authentication failed") to
            # connect()'s caller, which reports it and closes; it says more.
            return
        # The reactor saw the socket close: make sure psycopg2's side is
        # closed too (an unclosed connection keeps its file descriptor).
        self.drop(reason.getErrorMessage())

    def _doit(self, method: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        def unless_closed(*args: Any, **kwargs: Any) -> Any:
            if self._connection is None or self._connection.closed:
                # Each query queued behind a lost connection would fail inside
                # the failure of the one before it (txpostgres' lock hands the
                # next one over at once): past ~100 queued queries that
                # recursion blows up and the rest are never answered. Fail
                # them all here, one after another.
                self._fail_queued()
                raise ConnectionDone("the connection is closed")
            return method(*args, **kwargs)

        return super()._doit(unless_closed, *args, **kwargs)

    def _fail_queued(self) -> None:
        waiting, self.lock.waiting = self.lock.waiting, []
        for waiter in waiting:
            waiter.errback(ConnectionDone("the connection is closed"))

    def drop(self, why: str) -> None:
        """Close the connection and report why, once."""
        self._report(why)
        self.close()

    def close(self) -> None:
        if self._closing or self._connection is None:
            return
        self._closing = True
        # A running query's cursor is registered with the reactor as a reader
        # of the same descriptor, and txpostgres only unregisters the
        # connection. The epoll and poll reactors key readers by descriptor,
        # so that removes both; the select reactor keys them by object and
        # would go on selecting a closed descriptor. Unregister the cursors
        # while the descriptor is still open.
        for cursor in list(self._cursors):
            self.reactor.removeReader(cursor)
            self.reactor.removeWriter(cursor)
        try:
            super().close()
        except psycopg2.Error:
            pass

    def _report(self, why: str) -> None:
        if self._on_lost is not None:
            on_lost, self._on_lost = self._on_lost, None
            on_lost(why)


class ListenerService(Service):
    """Keeps one LISTEN connection alive and hands each change to ``deliver``.

    ``dsn`` is a DSN string or a callable returning a Deferred that fires with
    one (the embedded database is only known once it has started).
    """

    log = Logger()

    def __init__(
        self,
        dsn: str | Callable[[], defer.Deferred[str]],
        deliver: Deliver,
        reactor: IReactorTime,
        *,
        connect_timeout: float = 10.0,
        probe_interval: float = 3.0,
        probe_timeout: float = 4.0,
        retention_seconds: float = 24 * 3600,
        backoff: Callable[[int], float] | None = None,
        resolve: Resolve | None = None,
    ) -> None:
        self._dsn = dsn
        self._deliver = deliver
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._retention_seconds = retention_seconds
        self._backoff = backoff or default_backoff()
        self._resolve = resolve or resolve_in_thread(reactor)
        self._wanted: set[str] = set()
        self._listening: set[str] = set()
        # Per channel, the last seq handed on: the replay and the live
        # stream overlap after a reconnect, and this drops the overlap.
        self._channel_seq: dict[str, int] = {}
        self.last_seq: int | None = None
        self._connection: _Connection | None = None
        self._attempt = 0
        self._retry: IDelayedCall | None = None
        self._syncing = False
        self._catching_up = False
        self._buffer: list[tuple[str, str]] = []
        self._waiting: list[defer.Deferred[None]] = []
        self._listen_waiters: dict[str, list[defer.Deferred[None]]] = {}
        self._loops: list[LoopingCall] = []
        self.state = "stopped"
        self.reason = "not started"
        self.reconnects = 0
        self.notifications = 0
        self.replayed = 0
        self.trimmed = 0

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

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def whenConnected(self) -> defer.Deferred[None]:
        """Fires once the listener is connected and caught up.

        Fails with NotConnected if the service stops first; cancelling the
        Deferred forgets it.
        """
        if self.connected:
            return defer.succeed(None)

        def forget(waiter: defer.Deferred[None]) -> None:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

        waiter: defer.Deferred[None] = defer.Deferred(forget)
        self._waiting.append(waiter)
        return waiter

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

    def runQuery(self, query: Any, params: Any = None) -> defer.Deferred[list[tuple]]:
        """Run one query on the listener's connection (queued behind LISTENs)."""
        if self._connection is None or not self.connected:
            return defer.fail(NotConnected(self.reason))
        return self._watch(self._connection.runQuery(query, params), self._connection)

    def runInteraction(self, interaction: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run ``interaction(cursor, *args)`` in one transaction on our connection."""
        if self._connection is None or not self.connected:
            return defer.fail(NotConnected(self.reason))
        return self._watch(
            self._connection.runInteraction(interaction, *args), self._connection
        )

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._set_state("connecting", "connecting to the database")
        self._connect()

    def stopService(self) -> defer.Deferred[None]:
        """Cancel any retry, close the connection; nothing is left scheduled."""
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._stop_loops()
        connection, self._connection = self._connection, None
        self._listening = set()
        self._set_state("stopped", "service stopped")
        if connection is not None:
            connection._on_lost = None
            connection.close()
            self.log.info("Listener stopped; its PostgreSQL connection is closed.")
        self._fail_listen_waiters("service stopped")
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.errback(NotConnected("service stopped"))
        return defer.succeed(None)

    # -- connecting -----------------------------------------------------------

    @defer.inlineCallbacks
    def _connect(self) -> Any:
        self._retry = None
        self._set_state("connecting", self.reason)
        try:
            dsn = self._dsn if isinstance(self._dsn, str) else (yield self._dsn())
            if not self.running:
                return
            dsn = yield with_resolved_host(dsnlib.for_listener(dsn), self._resolve)
        except Exception as error:
            self._failed(None, f"no database to connect to: {_describe_error(error)}")
            return
        if not self.running:
            return
        connection = _Connection(self._reactor, on_lost=lambda why: self._lost(connection, why))
        self._connection = connection
        try:
            yield self._before_deadline(
                connection, connection.connect(dsn), self._connect_timeout,
                f"no answer from the database within {self._connect_timeout:g} s")
            if connection is not self._connection:  # dropped or stopped meanwhile
                return
            connection.addNotifyObserver(partial(self._on_notify, connection))
            yield self._resume(connection)
        except Exception as error:
            self._failed(connection, _describe_error(error))
            return
        if connection is not self._connection:
            return
        if self._attempt:
            self.reconnects += 1
        self._attempt = 0
        self._set_state("connected", "")
        self.log.info(
            "Listener connected; {count} channels listened, caught up to seq {seq}.",
            count=len(self._listening), seq=self.last_seq,
        )
        self._start_loops()
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)
        self._sync()

    def _before_deadline(self, connection: _Connection, d: defer.Deferred[Any],
                         seconds: float, why: str,
                         alive: Callable[[], bool] | None = None) -> defer.Deferred[Any]:
        """``d``, but the connection is dropped if it has not fired within ``seconds``.

        A timer can fire late, after the reactor was busy for seconds (a storm
        of connecting clients); the answer may then be sitting unread in the
        socket. So the deadline only drops the connection after the reactor
        has polled its sockets once more (``callLater(0)`` runs after the
        next I/O round) and the answer still has not come. If ``alive()``
        says the connection is answering other questions meanwhile, ``d`` is
        only waiting its turn: the deadline starts again.
        """
        timers: list[Any] = []

        def confirm() -> None:
            timers.append(self._reactor.callLater(0, expire))

        def expire() -> None:
            if alive is not None and alive():
                timers.append(self._reactor.callLater(seconds, confirm))
            else:
                connection.drop(why)

        timers.append(self._reactor.callLater(seconds, confirm))

        def disarm(result: Any) -> Any:
            for timer in timers:
                if timer.active():
                    timer.cancel()
            return result

        return d.addBoth(disarm)

    @defer.inlineCallbacks
    def _resume(self, connection: _Connection) -> Any:
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
                yield self._step(connection, connection.runOperation(
                    sql.SQL("LISTEN {}").format(sql.Identifier(channel))))
                self._listened(channel)
            rows = yield self._step(connection, connection.runQuery(LOG_BOUNDS_QUERY))
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

    def _step(self, connection: _Connection, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """One statement of the reconnect, with a deadline (no probe runs yet)."""
        return self._before_deadline(
            connection, d, self._connect_timeout,
            f"the database did not answer within {self._connect_timeout:g} s while resuming")

    @defer.inlineCallbacks
    def _catch_up(self, connection: _Connection) -> Any:
        """Replay, page by page, every change after ``last_seq`` on our channels."""
        events = sorted(e for e in map(channel_event, self._listening) if e is not None)
        everything = FIREHOSE in self._listening
        replayed = 0
        while True:
            params = {"after": self.last_seq, "limit": REPLAY_PAGE, "events": events}
            query = CATCH_UP_QUERY if everything else CATCH_UP_EVENTS_QUERY
            rows = yield self._step(connection, connection.runQuery(query, params))
            self._replay(rows)
            replayed += len(rows)
            if len(rows) < REPLAY_PAGE:
                break
        if replayed:
            self.log.info(
                "Replayed {count} changes committed while the listener was away.",
                count=replayed,
            )

    def _replay(self, rows: list[tuple[int, int, str]]) -> None:
        for seq, event_id, payload in rows:
            for channel in (f"event_{event_id}", FIREHOSE):
                if channel in self._listening:
                    self.replayed += 1
                    self._dispatch_change(channel, seq, payload)
            self.last_seq = max(self.last_seq or 0, seq)

    def _failed(self, connection: _Connection | None, why: str) -> None:
        if connection is not None:
            connection._on_lost = None
            connection.drop(why)
        if connection is not None and connection is not self._connection:
            return
        self._connection = None
        self._listening = set()
        self._stop_loops()
        self._fail_listen_waiters(why)
        if not self.running:
            return
        delay = self._backoff(self._attempt)
        self._attempt += 1
        self._set_state("disconnected", why)
        self.log.warn(
            "Cannot reach PostgreSQL ({why}); retry {attempt} in {delay:.1f} seconds.",
            why=why, attempt=self._attempt, delay=delay,
        )
        self._retry = self._reactor.callLater(delay, self._connect)

    def _lost(self, connection: _Connection, why: str) -> None:
        if connection is not self._connection:
            return
        self.log.warn("Lost the listener's PostgreSQL connection: {why}", why=why)
        self._failed(None, why)

    def _watch(self, d: defer.Deferred[Any], connection: _Connection) -> defer.Deferred[Any]:
        """Treat a broken connection seen by a query as a lost connection.

        The caller gets NotConnected whatever shape the loss took: psycopg2's
        OperationalError or InterfaceError, Twisted's ConnectionDone when the
        connection was closed under the query, or txpostgres' RollbackFailed
        when an interaction's transaction could not even be rolled back.
        """

        def check(failure: Any) -> Any:
            if failure.check(txpostgres.RollbackFailed):
                failure = failure.value.originalFailure  # and the connection is unusable
            elif not failure.check(psycopg2.OperationalError, psycopg2.InterfaceError,
                                   ConnectionDone, ConnectionLost):
                return failure
            why = _describe_error(failure.value)
            if connection is self._connection:
                connection.drop(why)
            return Failure(NotConnected(why))

        return d.addErrback(check)

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
                    yield self._watch(connection.runOperation(
                        sql.SQL("LISTEN {}").format(sql.Identifier(channel))), connection)
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
            self.log.warn("LISTEN/UNLISTEN failed: {why}", why=_describe_error(error))
        finally:
            self._syncing = False

    def _listened(self, channel: str) -> None:
        self._listening.add(channel)
        for waiter in self._listen_waiters.pop(channel, []):
            waiter.callback(None)

    def _fail_listen_waiters(self, why: str) -> None:
        waiters, self._listen_waiters = self._listen_waiters, {}
        for channel_waiters in waiters.values():
            for waiter in channel_waiters:
                waiter.errback(NotConnected(why))

    # -- notifications --------------------------------------------------------

    def _on_notify(self, connection: _Connection, notify: Any) -> None:
        if connection is not self._connection:
            return  # a late read from a connection already given up
        if self._catching_up:
            self._buffer.append((notify.channel, notify.payload))
        else:
            self._dispatch(notify.channel, notify.payload)

    def _dispatch(self, channel: str, payload: str) -> None:
        seq = parse_seq(payload)
        if seq is None:
            self.log.warn(
                "Ignored a notification on {channel} that is not a vote change: {payload!r}",
                channel=channel, payload=payload[:200],
            )
            return
        # Only channels LISTENed (or being LISTENed) on this connection have
        # an entry; a notification can arrive in the same read as the answer
        # to its LISTEN, before _listening says so.
        if channel in self._channel_seq:
            self._dispatch_change(channel, seq, payload)
        self.last_seq = max(self.last_seq or 0, seq)

    def _dispatch_change(self, channel: str, seq: int, payload: str) -> None:
        if seq <= self._channel_seq.get(channel, 0):
            return  # already delivered: the replay and the live stream overlap
        self._channel_seq[channel] = seq
        self.notifications += 1
        try:
            self._deliver(channel, seq, payload)
        except Exception:
            self.log.failure("Delivering change {seq} on {channel} failed", seq=seq,
                             channel=channel)

    # -- health and housekeeping ----------------------------------------------

    def _start_loops(self) -> None:
        # New LoopingCalls for every connection: one stopped while its call
        # was still running would otherwise reschedule itself when restarted.
        probe = LoopingCall(self._probe_once)
        probe.clock = self._reactor
        probe.start(self._probe_interval, now=False)
        retention = LoopingCall(self._enforce_retention)
        retention.clock = self._reactor
        retention.start(min(60.0, self._retention_seconds), now=True)
        self._loops = [probe, retention]

    def _stop_loops(self) -> None:
        loops, self._loops = self._loops, []
        for loop in loops:
            if loop.running:
                loop.stop()

    @defer.inlineCallbacks
    def _probe_once(self) -> Any:
        """A query with a deadline: a connection that went silent is dropped."""
        connection = self._connection
        if connection is None or not self.connected:
            return
        try:
            # Queued behind clients' queries (a storm of subscribes), the
            # probe may wait long; silent means nothing answered at all.
            yield self._before_deadline(
                connection, self._watch(connection.runQuery("SELECT 1"), connection),
                self._probe_timeout,
                f"the database did not answer a probe within {self._probe_timeout:g} s",
                alive=lambda: (self._reactor.seconds() - connection.answered_at
                               < self._probe_timeout))
        except Exception:
            pass  # the loss, if it was one, is already being handled

    @defer.inlineCallbacks
    def _enforce_retention(self) -> Any:
        """Delete changes older than the retention, in batches, keeping the newest."""
        params = {"keep": self._retention_seconds, "batch": TRIM_BATCH}
        total = 0
        try:
            while self.connected:
                rows = yield self.runQuery(TRIM_QUERY, params)
                total += rows[0][0]
                if rows[0][0] < TRIM_BATCH:
                    break
        except Exception as error:
            self.log.warn("Trimming the change log failed: {why}", why=_describe_error(error))
        if total:
            self.trimmed += total
            self.log.info("Trimmed {count} changes older than {keep:g} s from the change log.",
                          count=total, keep=self._retention_seconds)

    def _set_state(self, state: str, reason: str) -> None:
        self.state = state
        self.reason = reason


def _describe_error(error: BaseException) -> str:
    if isinstance(error, psycopg2.errors.UndefinedTable | psycopg2.errors.UndefinedFunction):
        return ("the database side is not installed (run `partysense-db install --dsn DSN`): "
                + str(error).strip().splitlines()[0])
    text = str(error).strip().splitlines()
    if not text:
        return type(error).__name__
    # libpq's severity prefix ("FATAL:  ...") says nothing to a sysadmin.
    first = text[0]
    for prefix in ("FATAL:", "ERROR:"):
        if first.startswith(prefix):
            first = first[len(prefix):].strip()
    return first
