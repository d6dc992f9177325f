"""The one PostgreSQL connection that LISTENs on behalf of every client.

The service keeps the set of channels that have subscribers and makes the
connection LISTEN to exactly those. When the connection is lost (backend
killed, server restarted, network silently dead, server down at start) it
reconnects with capped, jittered backoff, LISTENs again, and replays from the
change log what was committed while it was away, so subscribers see every
change once, in commit order. Notifications carry a ``seq`` that follows
commit order (sql/install.sql); that number is what makes the replay exact.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from txpostgres import txpostgres

from partysense import dsn as dsnlib

FIREHOSE = "firehose"

# Delivered for every change: (channel, seq, payload text from the trigger).
Deliver = Callable[[str, int, str], None]

CATCH_UP_QUERY = """
    SELECT c.seq, c.event_id,
           partysense_payload(c.seq, c.op, c.vote_id, c.event_id, e.title, c.track_id,
                              m.name, m.artist, c.up, c.prev_up, false, c.committed_at)
    FROM partysense_change c
    LEFT JOIN event_event e ON e.id = c.event_id
    LEFT JOIN music_view m ON m.id = c.track_id
    WHERE c.seq > %s
    ORDER BY c.seq
"""

LAST_SEQ_QUERY = "SELECT coalesce(max(seq), 0) FROM partysense_change"

RETENTION_QUERY = """
    WITH trimmed AS (
        DELETE FROM partysense_change WHERE committed_at < now() - %s * interval '1 second'
        RETURNING 1
    ) SELECT count(*) FROM trimmed
"""


class NotConnected(Exception):
    """The listener has no database connection right now."""


def event_channel(event_id: int) -> str:
    """The channel of one event. Only ever built from a validated integer."""
    if type(event_id) is not int or event_id <= 0:
        raise ValueError(f"event id must be a positive integer, not {event_id!r}")
    return f"event_{event_id}"


def parse_seq(payload: str) -> int | None:
    """The change's seq, or None for a payload that is not one of our changes."""
    try:
        seq = json.loads(payload)["seq"]
    except (ValueError, TypeError, KeyError):
        return None
    return seq if type(seq) is int else None


class _Immediately:
    """A stand-in for txpostgres' Cooperator that runs observers at once.

    The default Cooperator interleaves notification batches, which can
    reorder them; commit order is the one thing we must keep.
    """

    def cooperate(self, iterator: Any) -> None:
        for _ in iterator:
            pass


class _Connection(txpostgres.Connection):
    """A txpostgres connection that reports its loss once, without a traceback."""

    def __init__(self, reactor: Any, on_lost: Callable[[str], None]) -> None:
        super().__init__(reactor=reactor, cooperator=_Immediately())
        self._on_lost: Callable[[str], None] | None = on_lost

    def doRead(self) -> None:
        try:
            super().doRead()
        except psycopg2.Error as error:
            self.drop(str(error).strip() or type(error).__name__)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self._report(reason.getErrorMessage())

    def drop(self, why: str) -> None:
        """Close the connection and report why, once."""
        self._report(why)
        if self._connection is not None:
            try:
                self.close()
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
        probe_interval: float = 5.0,
        probe_timeout: float = 5.0,
        retention_seconds: float = 24 * 3600,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        self._dsn = dsn
        self._deliver = deliver
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._probe_timeout = probe_timeout
        self._retention_seconds = retention_seconds
        self._backoff = backoff or backoffPolicy(
            initialDelay=0.5, maxDelay=10.0, factor=2.0, jitter=random.random
        )
        self._wanted: set[str] = set()
        self._listening: set[str] = set()
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
        self._probe = LoopingCall(self._probe_once)
        self._probe.clock = reactor
        self._probe_interval = probe_interval
        self._retention = LoopingCall(self._enforce_retention)
        self._retention.clock = reactor
        self.state = "stopped"
        self.reason = "not started"
        self.reconnects = 0
        self.notifications = 0

    # -- what the hub asks for ------------------------------------------------

    def listen(self, channel: str) -> None:
        """Make sure ``channel`` is LISTENed (now, or as soon as connected)."""
        self._wanted.add(channel)
        self._sync()

    def unlisten(self, channel: str) -> None:
        """Stop listening to ``channel`` once its last subscriber has gone."""
        self._wanted.discard(channel)
        self._sync()

    @property
    def channels(self) -> frozenset[str]:
        """The channels LISTENed on the current connection."""
        return frozenset(self._listening)

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def whenConnected(self) -> defer.Deferred[None]:
        """A Deferred that fires once the listener is connected and caught up."""
        if self.connected:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
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

    def _listened(self, channel: str) -> None:
        self._listening.add(channel)
        for waiter in self._listen_waiters.pop(channel, []):
            waiter.callback(None)

    def _fail_listen_waiters(self, why: str) -> None:
        waiters, self._listen_waiters = self._listen_waiters, {}
        for channel_waiters in waiters.values():
            for waiter in channel_waiters:
                waiter.errback(NotConnected(why))

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
        self._connect()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._stop_loops()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection._on_lost = None
            try:
                connection.close()
            except psycopg2.Error:
                pass
        self._set_state("stopped", "service stopped")
        return defer.succeed(None)

    # -- connecting -----------------------------------------------------------

    @defer.inlineCallbacks
    def _connect(self) -> Any:
        self._retry = None
        self._set_state("connecting", self.reason)
        try:
            dsn = self._dsn if isinstance(self._dsn, str) else (yield self._dsn())
        except Exception as error:
            self._failed(None, f"no database to connect to: {error}")
            return
        if not self.running:
            return
        connection = _Connection(self._reactor, on_lost=lambda why: self._lost(connection, why))
        self._connection = connection
        timeout = self._reactor.callLater(
            self._connect_timeout, connection.drop,
            f"no answer from the database within {self._connect_timeout:g} s",
        )
        try:
            yield connection.connect(dsnlib.for_listener(dsn))
        except Exception as error:
            if timeout.active():
                timeout.cancel()
            self._failed(connection, _describe_error(error))
            return
        if timeout.active():
            timeout.cancel()
        if connection is not self._connection:  # dropped or stopped meanwhile
            return
        connection.addNotifyObserver(self._on_notify)
        try:
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
        self._probe.start(self._probe_interval, now=False)
        self._retention.start(min(3600.0, self._retention_seconds), now=True)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)
        self._sync()

    @defer.inlineCallbacks
    def _resume(self, connection: _Connection) -> Any:
        """LISTEN again and replay what was committed while we were away."""
        self._catching_up = True
        self._listening = set()
        try:
            for channel in sorted(self._wanted):
                yield connection.runOperation(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                self._listened(channel)
                self._channel_seq.setdefault(channel, self.last_seq or 0)
            if self.last_seq is None:
                rows = yield connection.runQuery(LAST_SEQ_QUERY)
                self.last_seq = rows[0][0]
            else:
                rows = yield connection.runQuery(CATCH_UP_QUERY, (self.last_seq,))
                self._replay(rows)
            buffered, self._buffer = self._buffer, []
            for channel, payload in buffered:
                self._dispatch(channel, payload)
        finally:
            self._catching_up = False

    def _replay(self, rows: list[tuple[int, int, str]]) -> None:
        if rows:
            self.log.info(
                "Replaying {count} changes committed while the listener was away.",
                count=len(rows),
            )
        for seq, event_id, payload in rows:
            for channel in (f"event_{event_id}", FIREHOSE):
                if channel in self._listening:
                    self._dispatch_change(channel, seq, payload)
            self.last_seq = max(self.last_seq or 0, seq)

    def _failed(self, connection: _Connection | None, why: str) -> None:
        if connection is not None:
            connection._on_lost = None
            connection.drop(why)
        if connection is not None and connection is not self._connection:
            return
        self._connection = None
        self._stop_loops()
        self._fail_listen_waiters(why)
        if not self.running:
            return
        self._attempt += 1
        delay = self._backoff(self._attempt)
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
        self._listening = set()
        self._failed(None, why)

    def _watch(self, d: defer.Deferred[Any], connection: _Connection) -> defer.Deferred[Any]:
        """Treat a broken connection seen by a query as a lost connection."""

        def check(failure: Any) -> Any:
            if failure.check(psycopg2.OperationalError, psycopg2.InterfaceError):
                if connection is self._connection:
                    connection.drop(_describe_error(failure.value))
            return failure

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
                    yield self._watch(connection.runOperation(
                        sql.SQL("LISTEN {}").format(sql.Identifier(channel))), connection)
                    self._listened(channel)
                    self._channel_seq[channel] = self.last_seq or 0
                for channel in to_unlisten:
                    yield self._watch(connection.runOperation(
                        sql.SQL("UNLISTEN {}").format(sql.Identifier(channel))), connection)
                    self._listening.discard(channel)
                    self._channel_seq.pop(channel, None)
        except Exception as error:
            self.log.warn("LISTEN/UNLISTEN failed: {why}", why=_describe_error(error))
        finally:
            self._syncing = False

    # -- notifications --------------------------------------------------------

    def _on_notify(self, notify: Any) -> None:
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
        if channel in self._listening:
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

    # -- health ---------------------------------------------------------------

    @defer.inlineCallbacks
    def _probe_once(self) -> Any:
        """A query with a deadline: a connection that went silent is dropped."""
        connection = self._connection
        if connection is None or not self.connected:
            return
        d = connection.runQuery("SELECT 1")
        timer = self._reactor.callLater(
            self._probe_timeout, connection.drop,
            f"the database did not answer a probe within {self._probe_timeout:g} s",
        )
        try:
            yield self._watch(d, connection)
        except Exception:
            pass
        finally:
            if timer.active():
                timer.cancel()

    @defer.inlineCallbacks
    def _enforce_retention(self) -> Any:
        if self._connection is None or not self.connected:
            return
        try:
            yield self.runQuery(RETENTION_QUERY, (self._retention_seconds,))
        except Exception as error:
            self.log.warn("Trimming the change log failed: {why}", why=_describe_error(error))

    def _stop_loops(self) -> None:
        for loop in (self._probe, self._retention):
            if loop.running:
                loop.stop()

    def _set_state(self, state: str, reason: str) -> None:
        self.state = state
        self.reason = reason


def _describe_error(error: BaseException) -> str:
    if isinstance(error, psycopg2.errors.UndefinedTable | psycopg2.errors.UndefinedFunction):
        return ("the database side is not installed (run `partysense-db install --dsn DSN`): "
                + str(error).strip().splitlines()[0])
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
