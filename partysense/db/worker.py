"""One thread of its own, for blocking database work done strictly in order.

The WAL relay's SQL (partysense/db/walrelay.py) is a few statements a second
on a blocking psycopg2 connection. Twisted's ThreadPool would do, but its
``stop()`` joins its threads, and a statement on a connection that went silent
(a dead NAT entry, a proxy: the peer's kernel still acknowledges, so neither
keepalives nor TCP timeouts notice) never returns. Here a job may have a
deadline, after which its Deferred fails with ``defer.TimeoutError`` and the
caller gives the worker up for a new one; the thread is a daemon thread, so a
stuck one holds nothing, not even the process's exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

_STOP = object()


class Worker:
    """Runs callables one at a time in one daemon thread; results as Deferreds."""

    def __init__(self, reactor: Any, name: str) -> None:
        self._reactor = reactor
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The thread ends after the job it is running, if that ever ends; not waited for."""
        self._jobs.put(_STOP)

    def run(self, work: Callable[..., Any], *args: Any,
            timeout: float | None = None) -> defer.Deferred[Any]:
        """``work(*args)`` in the thread, after the jobs before it; past ``timeout``
        seconds the Deferred fails with defer.TimeoutError (the job still runs)."""
        done: defer.Deferred[Any] = defer.Deferred()
        self._jobs.put((done, work, args))
        if timeout is not None:
            done.addTimeout(timeout, self._reactor)
        return done

    def _run(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            done, work, args = job
            try:
                result = work(*args)
            except BaseException:
                self._reactor.callFromThread(_deliver, done, Failure())
            else:
                self._reactor.callFromThread(_deliver, done, result)


def _deliver(done: defer.Deferred[Any], result: Any) -> None:
    if done.called:
        return  # timed out meanwhile: nobody waits for it any more
    if isinstance(result, Failure):
        done.errback(result)
    else:
        done.callback(result)
