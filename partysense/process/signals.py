"""SIGTERM and SIGINT handled on the reactor's loop, not inside the signal handler.

Twisted's own handlers log ("Received SIGTERM, shutting down.") from inside
the Python signal handler, and its log file observer is synchronized by a
lock written in Python (twisted.python.threadable's XLock). A signal that
lands between that lock's acquisition and the recording of its owner runs
the handler, which asks for the same lock as a stranger and waits for ever:
the daemon hangs on SIGTERM, the pidfile stays, systemd kills it after its
timeout. It was seen: a WebSocket's end-of-connection access line being
written at the moment the SIGTERM came (tests/test_signals.py). The handlers
installed here only queue the reactor's own handler with ``callFromThread``
(a list append and a byte to the waker: no lock), and it runs on the next turn.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any]


def deferred(reactor: Any, handler: Handler) -> Handler:
    """A signal handler that queues ``handler`` on ``reactor``'s loop."""

    def on_signal(number: int, frame: FrameType | None) -> None:
        reactor.callFromThread(handler, number, None)

    on_signal.queues = handler  # type: ignore[attr-defined]  # for the tests, and a reader
    return on_signal


def _installed_by_someone(number: int) -> bool:
    current = signal.getsignal(number)
    return callable(current) and current is not signal.default_int_handler


def handle_signals_on_the_loop(reactor: Any) -> None:
    """Replace the reactor's SIGTERM and SIGINT handlers (once it has installed
    them: call this when it runs) by ones that run them on its loop."""
    for number, handler in ((signal.SIGTERM, reactor.sigTerm), (signal.SIGINT, reactor.sigInt)):
        if _installed_by_someone(number):
            signal.signal(number, deferred(reactor, handler))
