"""A PostgreSQL connection kept alive by a Twisted service.

:class:`PostgresService` connects (every step with a deadline: txpostgres'
connect() has none of its own), reconnects with capped, jittered backoff
when the connection is lost, and notices a connection that went silent
without closing: a probe query with a deadline every ``probe_interval``
seconds, and TCP keepalives (partysense/db/dsn.py) where packets stop being
acknowledged. A killed backend or a restarted server closes the socket and
is seen at once.

What a new connection must do before it counts as connected is handed in,
as with Twisted's ``ClientService(prepareConnection=...)``: the listener
(partysense/db/listener.py) keeps one whose ``prepare`` LISTENs and catches
up; the query connection (partysense/db/queries.py) that clients' questions
use needs nothing, and is apart so that no client load can delay the
listener's notifications or starve its probe.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.errors
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from partysense.core.errors import first_line
from partysense.db import dsn as dsnlib
from partysense.db.deadline import before_deadline
from partysense.db.errors import NotConnected, Overloaded, QueryRefused
from partysense.db.txpostgres_adapter import (
    PgConnection,
    Resolve,
    RollbackFailed,
    resolve_in_thread,
    with_resolved_host,
)


def default_backoff() -> Callable[[int], float]:
    """Seconds to wait before retry ``attempt`` (0, 1, ...): 0.25 s doubling to 10 s.

    Plus up to half a second of jitter, so that many daemons cut off by one
    database restart do not all knock at the same instant.
    """
    return backoffPolicy(initialDelay=0.25, maxDelay=10.0, factor=2.0,
                         jitter=lambda: random.uniform(0.0, 0.5))


def describe_error(error: BaseException) -> str:
    """An error as one line for the log, with what to do about a missing install."""
    if isinstance(error, psycopg2.errors.UndefinedTable | psycopg2.errors.UndefinedFunction):
        return ("the database side is not installed (run `partysense-db install --dsn DSN`): "
                + first_line(error))
    return first_line(error)


class PostgresService(Service):
    """Keeps one connection to PostgreSQL, made ready by what it is handed.

    ``dsn`` is a DSN string or a callable returning a Deferred that fires
    with one. ``role`` names the connection in log lines,
    ``application_name`` in pg_stat_activity (unless the DSN names one).
    ``prepare(connection)`` makes a new connection ready before it counts
    as connected (each statement under :meth:`step`); ``on_connected()`` is
    called once it is; ``on_down(why)`` whenever a connection is gone (lost,
    failed or stopped), to drop what belonged to it. ``log`` says in whose
    name (its namespace) the connection's life is logged.
    """

    log = Logger()

    def __init__(
        self,
        dsn: dsnlib.DSNSource,
        reactor: IReactorTime,
        *,
        role: str,
        application_name: str,
        connect_timeout: float = 10.0,
        probe_interval: float = 3.0,
        probe_timeout: float = 4.0,
        backoff: Callable[[int], float] | None = None,
        resolve: Resolve | None = None,
        max_waiting: int | None = None,
        grace: float = 0.0,
        prepare: Callable[[PgConnection], defer.Deferred[None]] | None = None,
        on_connected: Callable[[], None] | None = None,
        on_down: Callable[[str], None] | None = None,
        log: Logger | None = None,
    ) -> None:
        self._dsn = dsn
        self._reactor = reactor
        self.role = role
        self._application_name = application_name
        self._connect_timeout = connect_timeout
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._backoff = backoff or default_backoff()
        self._resolve = resolve or resolve_in_thread(reactor)
        self._prepare = prepare or (lambda connection: defer.succeed(None))
        self._on_connected = on_connected or (lambda: None)
        self._on_down = on_down or (lambda why: None)
        if log is not None:
            self.log = log
        self._connection: PgConnection | None = None
        self._max_waiting = max_waiting
        # While connecting for the first time, or for this long after losing
        # the connection, work waits for it instead of failing at once: the
        # port opens before the database answers, and phones that reconnect
        # first must not be turned away (docs/operations.md, --grace).
        self._grace = grace
        self._down_since: float | None = None
        self.waiting = 0     # queries and interactions not yet answered
        self.refused = 0     # refused because max_waiting were waiting
        self._attempt = 0
        self._retry: IDelayedCall | None = None
        self._probe: LoopingCall | None = None
        self._waiting: dict[defer.Deferred[None], None] = {}
        self.state = "stopped"
        self.reason = "not started"
        self.reconnects = 0

    # -- public ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    @property
    def connection(self) -> PgConnection | None:
        """The current connection (being prepared, or connected), if any."""
        return self._connection

    def whenConnected(self) -> defer.Deferred[None]:
        """Fires once connected (and ready).

        Fails with NotConnected if the service stops first; cancelling the
        Deferred forgets it.
        """
        if self.connected:
            return defer.succeed(None)

        def forget(waiter: defer.Deferred[None]) -> None:
            self._waiting.pop(waiter, None)

        waiter: defer.Deferred[None] = defer.Deferred(forget)
        self._waiting[waiter] = None
        return waiter

    def whenAvailable(self) -> defer.Deferred[None]:
        """Fires once connected: at once, or within what is left of the grace
        period since the connection went down (or the service started);
        NotConnected past it."""
        if self.connected:
            return defer.succeed(None)
        left = self._grace_left()
        if left <= 0:
            return defer.fail(NotConnected(self.reason))

        def too_late(failure: Failure) -> Failure:
            failure.trap(defer.TimeoutError)
            return Failure(NotConnected(self.reason))

        return self.whenConnected().addTimeout(left, self._reactor).addErrback(too_late)

    def _grace_left(self) -> float:
        if self._down_since is None or not self.running:
            return 0.0
        return self._down_since + self._grace - self._reactor.seconds()

    def runQuery(self, query: Any, params: Any = None) -> defer.Deferred[list[tuple]]:
        """Run one query; NotConnected when there is no connection or it is lost,
        Overloaded when ``max_waiting`` queries wait already."""
        return self._run(lambda connection: connection.runQuery(query, params))

    def runInteraction(self, interaction: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run ``interaction(cursor, *args)`` in one transaction (refused as runQuery)."""
        return self._run(lambda connection: connection.runInteraction(interaction, *args))

    def _run(self, start: Callable[[PgConnection], defer.Deferred[Any]]) -> defer.Deferred[Any]:
        connection = self._connection
        if self._max_waiting is not None and self.waiting >= self._max_waiting:
            # Queued without end, work would wait for minutes and hold its
            # clients' memory: better to say "busy, retry" at once.
            self.refused += 1
            return defer.fail(Overloaded(
                f"the database is busy ({self.waiting} queries waiting)"))
        if connection is None or not self.connected:
            if self._grace_left() > 0:  # connecting: wait for it, within the grace
                return self._counted(self.whenAvailable()).addCallback(
                    lambda _: self._run(start))
            return defer.fail(NotConnected(self.reason))
        return self._counted(self.watch(start(connection), connection))

    def _counted(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """``d``, counted in ``waiting`` until it fires."""
        self.waiting += 1

        def answered(result: Any) -> Any:
            self.waiting -= 1
            return result

        return d.addBoth(answered)

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._down_since = self._reactor.seconds()
        self._set_state("connecting", "connecting to the database")
        self._connect()

    def stopService(self) -> defer.Deferred[None]:
        """Cancel any retry, close the connection; nothing is left scheduled."""
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._stop_probe()
        connection, self._connection = self._connection, None
        self._set_state("stopped", "service stopped")
        if connection is not None:
            connection.forget_owner()
            connection.close()
            self.log.info("{Role} stopped; its PostgreSQL connection is closed.",
                          Role=self.role.capitalize())
        self._on_down("service stopped")
        waiting, self._waiting = list(self._waiting), {}
        for waiter in waiting:
            waiter.errback(NotConnected("service stopped"))
        return defer.succeed(None)

    # -- connecting -----------------------------------------------------------

    @defer.inlineCallbacks
    def _connect(self) -> Any:
        self._retry = None
        self._set_state("connecting", self.reason)
        try:
            dsn = yield dsnlib.when_known(self._dsn)
            if not self.running:
                return
            dsn = yield with_resolved_host(
                dsnlib.for_connection(dsn, self._application_name), self._resolve)
        except Exception as error:
            self._failed(None, f"no database to connect to: {describe_error(error)}")
            return
        if not self.running:
            return
        connection = PgConnection(self._reactor, on_lost=lambda why: self._lost(connection, why))
        self._connection = connection
        try:
            yield self._before_deadline(
                connection, connection.connect(dsn), self._connect_timeout,
                f"no answer from the database within {self._connect_timeout:g} s")
            if connection is not self._connection:  # dropped or stopped meanwhile
                return
            yield self._prepare(connection)
        except Exception as error:
            self._failed(connection, describe_error(error))
            return
        if connection is not self._connection:
            return
        if self._attempt:
            self.reconnects += 1
        self._attempt = 0
        self._down_since = None
        self._set_state("connected", "")
        self._start_probe()
        self._on_connected()
        waiting, self._waiting = list(self._waiting), {}
        for waiter in waiting:
            waiter.callback(None)

    def _before_deadline(self, connection: PgConnection, d: defer.Deferred[Any],
                         seconds: float, why: str,
                         alive: Callable[[], bool] | None = None) -> defer.Deferred[Any]:
        """``d``, or the connection dropped past ``seconds`` (db/deadline.py)."""
        return before_deadline(self._reactor, connection, d, seconds, why, alive)

    def step(self, connection: PgConnection, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """One statement of ``prepare``, with a deadline (no probe runs yet)."""
        return self._before_deadline(
            connection, d, self._connect_timeout,
            f"the database did not answer within {self._connect_timeout:g} s while resuming")

    def _failed(self, connection: PgConnection | None, why: str) -> None:
        if connection is not None:
            connection.forget_owner()
            connection.drop(why)
        if connection is not None and connection is not self._connection:
            return
        self._connection = None
        if self._down_since is None:
            self._down_since = self._reactor.seconds()
        self._stop_probe()
        self._on_down(why)
        if not self.running:
            return
        delay = self._backoff(self._attempt)
        self._attempt += 1
        self._set_state("disconnected", why)
        self.log.warn(
            "Cannot reach PostgreSQL for the {role} ({why}); retry {attempt} in "
            "{delay:.1f} seconds.", role=self.role, why=why, attempt=self._attempt, delay=delay,
        )
        self._retry = self._reactor.callLater(delay, self._connect)

    def _lost(self, connection: PgConnection, why: str) -> None:
        if connection is not self._connection:
            return
        self.log.warn("Lost the {role}'s PostgreSQL connection: {why}", role=self.role, why=why)
        self._failed(None, why)

    def watch(self, d: defer.Deferred[Any], connection: PgConnection) -> defer.Deferred[Any]:
        """Treat a broken connection seen by a query as a lost connection.

        The caller gets NotConnected whatever shape the loss took: psycopg2's
        OperationalError or InterfaceError, Twisted's ConnectionDone when the
        connection was closed under the query, or txpostgres' RollbackFailed
        when an interaction's transaction could not even be rolled back; and
        QueryRefused for any other error the database answered (db/errors.py:
        nothing above db/ speaks psycopg2).
        """

        def check(failure: Any) -> Any:
            if failure.check(RollbackFailed):
                failure = failure.value.originalFailure  # and the connection is unusable
            elif failure.check(psycopg2.Error) and not failure.check(
                    psycopg2.OperationalError, psycopg2.InterfaceError):
                return Failure(QueryRefused(describe_error(failure.value)))
            elif not failure.check(psycopg2.OperationalError, psycopg2.InterfaceError,
                                   ConnectionDone, ConnectionLost):
                return failure
            why = describe_error(failure.value)
            if connection is self._connection:
                connection.drop(why)
            return Failure(NotConnected(why))

        return d.addErrback(check)

    # -- the probe ------------------------------------------------------------

    def _start_probe(self) -> None:
        # A new LoopingCall for every connection: one stopped while its call
        # was still running would otherwise reschedule itself when restarted.
        self._probe = LoopingCall(self._probe_once)
        self._probe.clock = self._reactor
        self._probe.start(self._probe_interval, now=False)

    def _stop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None and probe.running:
            probe.stop()

    @defer.inlineCallbacks
    def _probe_once(self) -> Any:
        """A query with a deadline: a connection that went silent is dropped."""
        connection = self._connection
        if connection is None or not self.connected:
            return
        try:
            # Queued behind other queries (a storm of subscribes), the probe
            # may wait long; silent means nothing answered at all.
            yield self._before_deadline(
                connection, self.watch(connection.runQuery("SELECT 1"), connection),
                self._probe_timeout,
                f"the database did not answer a probe within {self._probe_timeout:g} s",
                alive=lambda: (self._reactor.seconds() - connection.answered_at
                               < self._probe_timeout))
        except Exception:
            pass  # the loss, if it was one, is already being handled

    def _set_state(self, state: str, reason: str) -> None:
        self.state = state
        self.reason = reason
