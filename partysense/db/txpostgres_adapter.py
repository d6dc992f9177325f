"""txpostgres, as the daemon needs it: a connection that reports its loss once.

txpostgres (last released 2019) runs psycopg2's asynchronous connections on
the reactor. Used as it is, it leaves five gaps, closed here with the only
means it offers, overriding its methods and touching its private state:

- a lost connection is not reported to its owner (``connectionLost`` and
  ``doRead`` are overridden to report it once, with the reason);
- queries queued behind a lost connection fail inside each other's failure
  (its lock hands the next one over at once): past ~100 of them that
  recursion blows up and the rest are never answered (``_doit``,
  ``lock.waiting``);
- an interaction cut off by the loss tries a ROLLBACK on the dead
  connection and logs "Unhandled Error" (``Cursor.execute``);
- closing leaves a running query's cursor registered with the select
  reactor (``_cursors``);
- notifications go through a Cooperator, which can reorder batches, and a
  Deferred each (``checkForNotifies``, ``_notifyObservers``).

It also resolves host names itself, off the reactor thread: libpq would
block the whole daemon for as long as DNS takes.

Private names used: ``Connection._doit``, ``Connection.lock.waiting``,
``Connection._pollingD``, ``Connection._connection``, ``Connection._cursors``,
``Connection._notifyObservers``, ``Cursor._connection``.
Canaries: tests/test_adapters_txpostgres.py.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet import defer, threads
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from txpostgres import txpostgres

from partysense.core.errors import first_line

log = Logger()

# Resolves a host name to its addresses without blocking the reactor.
Resolve = Callable[[str, int], defer.Deferred[list[str]]]

# The errors a query fails with when its connection is gone: psycopg2's,
# Twisted's ConnectionDone when it was closed under the query, txpostgres'
# RollbackFailed when an interaction could not even be rolled back.
RollbackFailed = txpostgres.RollbackFailed


class _Cursor(txpostgres.Cursor):
    def execute(self, query: Any, params: Any = None) -> defer.Deferred[Any]:
        if query == "rollback" and self._connection.pollable().closed:
            # An interaction cut off by a lost connection: there is nothing to
            # roll back, and txpostgres would log the failed ROLLBACK as an
            # "Unhandled Error". The interaction's own failure still goes to
            # its caller.
            return defer.succeed(self)
        return super().execute(query, params)


class PgConnection(txpostgres.Connection):
    """A txpostgres connection that reports its loss once, and closes cleanly.

    ``on_lost(why)`` is called once, the first time the connection is found
    lost or is dropped; never for a connect() that fails (its caller hears).
    """

    cursorFactory = _Cursor

    def __init__(self, reactor: Any, on_lost: Callable[[str], None]) -> None:
        super().__init__(reactor=reactor)
        self._on_lost: Callable[[str], None] | None = on_lost
        self._closing = False
        self.answered_at = 0.0  # when a query last got its answer (the probe's sign of life)
        # Called with the number of notifications of each batch before it
        # goes to the observers, and after it has.
        self.before_notifications: list[Callable[[int], None]] = []
        self.after_notifications: list[Callable[[], None]] = []

    def cursorFinished(self, cursor: Any) -> None:
        self.answered_at = self.reactor.seconds()
        super().cursorFinished(cursor)

    def checkForNotifies(self) -> None:
        """Hand each notification to each observer, at once, in arrival order.

        txpostgres runs them through a Cooperator, which can interleave and so
        reorder batches (commit order is the one thing we must keep), and
        wraps every call in a Deferred: at a few thousand notifications a
        second that wrapping was a tenth of the listener's CPU.
        """
        notifies = self._connection.notifies
        if not notifies:
            return
        batch = notifies[:]
        del notifies[:]
        observers = list(self._notifyObservers)
        for start in self.before_notifications:
            start(len(batch))
        for notify in batch:
            for observer in observers:
                try:
                    observer(notify)
                except Exception:
                    log.failure("A notification observer failed on {channel}",
                                channel=notify.channel)
        for done in self.after_notifications:
            done()

    def doRead(self) -> None:
        try:
            super().doRead()
        except psycopg2.Error as error:
            self.drop(first_line(error))

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

    def forget_owner(self) -> None:
        """Report nothing more: the owner has given this connection up."""
        self._on_lost = None

    def drop(self, why: str) -> None:
        """Close the connection and report why, once."""
        if self._on_lost is not None:
            on_lost, self._on_lost = self._on_lost, None
            on_lost(why)
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

    ``host`` stays as it was: TLS verification, SNI and ~/.pgpass matching
    use it. Every address is kept (the host name repeated once per address)
    so libpq still tries them in turn.
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
