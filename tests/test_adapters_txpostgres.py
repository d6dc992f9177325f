"""Canaries for every private name of txpostgres the daemon uses
(partysense/db/txpostgres_adapter.py); the check is tests/adapters_support.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from txpostgres import txpostgres

from partysense.db import txpostgres_adapter
from tests.adapters_support import canary, parameters

pytestmark = pytest.mark.logic


@pytest.fixture
def connection() -> txpostgres.Connection:
    return txpostgres.Connection(reactor=MemoryReactorClock(), cooperator=None)


def test_txpostgres_connection_takes_a_reactor_and_a_cooperator() -> None:
    canary("txpostgres", "Connection.__init__(reactor, cooperator)",
           {"reactor", "cooperator"} <= set(parameters(txpostgres.Connection.__init__)),
           "keyword arguments reactor= and cooperator=")


def test_txpostgres_doit_wraps_every_query(connection: txpostgres.Connection) -> None:
    canary("txpostgres", "Connection._doit", callable(getattr(connection, "_doit", None))
           and parameters(txpostgres.Connection._doit)[:2] == ["self", "method"],
           "_doit(self, method, *args, **kwargs)")


def test_txpostgres_lock_keeps_its_waiters_in_a_list(connection: txpostgres.Connection) -> None:
    canary("txpostgres", "Connection.lock.waiting",
           isinstance(getattr(getattr(connection, "lock", None), "waiting", None), list),
           "a DeferredLock with a .waiting list")


@pytest.mark.parametrize("name", ["_pollingD", "_connection", "_cursors", "_notifyObservers"])
def test_txpostgres_connection_state(connection: txpostgres.Connection, name: str) -> None:
    canary("txpostgres", f"Connection.{name}", hasattr(connection, name),
           "an attribute set by __init__")


@pytest.mark.parametrize("name", ["doRead", "connectionLost", "cursorFinished", "close",
                                  "checkForNotifies"])
def test_txpostgres_connection_methods_we_override(name: str) -> None:
    canary("txpostgres", f"Connection.{name}", callable(getattr(txpostgres.Connection, name, None)),
           "a method")


def test_txpostgres_cursor_execute_and_rollback_failed() -> None:
    canary("txpostgres", "Cursor.execute(query, params)",
           parameters(txpostgres.Cursor.execute)[:3] == ["self", "query", "params"],
           "execute(self, query, params=None)")
    canary("txpostgres", "Cursor._connection",
           "_connection" in parameters(txpostgres.Cursor.__init__)
           or "connection" in parameters(txpostgres.Cursor.__init__), "Cursor(cursor, connection)")
    canary("txpostgres", "RollbackFailed.originalFailure",
           "originalFailure" in parameters(txpostgres.RollbackFailed.__init__),
           "RollbackFailed(connection, originalFailure)")


def test_our_connection_fails_every_query_queued_when_closed() -> None:
    connection = txpostgres_adapter.PgConnection(MemoryReactorClock(), on_lost=lambda why: None)
    failures: list[Any] = []
    connection.runQuery("SELECT 1").addErrback(failures.append)
    assert failures and "closed" in failures[0].getErrorMessage()

