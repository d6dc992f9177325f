"""SIGTERM and SIGINT run the reactor's handlers on its loop (partysense/process/signals.py).

Twisted's handler logs inside the signal handler; the log file's lock is a
Python RLock, and a signal landing between the low-level acquire and the
owner's record made the daemon wait on itself for ever at shutdown.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.python import threadable

from partysense.process.signals import handle_signals_on_the_loop

pytestmark = pytest.mark.logic


class Reactor:
    """What the handlers use of a reactor: its own handlers and callFromThread."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, int]] = []
        self.queued: list[tuple[Any, tuple[Any, ...]]] = []

    def sigTerm(self, number: int, frame: Any = None) -> None:
        self.handled.append(("term", number))

    def sigInt(self, number: int, frame: Any = None) -> None:
        self.handled.append(("int", number))

    def callFromThread(self, call: Any, *args: Any) -> None:
        self.queued.append((call, args))

    def turn(self) -> None:
        queued, self.queued = self.queued, []
        for call, args in queued:
            call(*args)


@pytest.fixture
def installed_by_twisted() -> Iterator[None]:
    """SIGTERM and SIGINT handled as a running reactor leaves them; put back after."""
    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    for number in before:
        signal.signal(number, lambda number, frame: None)
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def test_a_signal_queues_the_reactors_handler_for_its_loop(installed_by_twisted: None) -> None:
    reactor = Reactor()
    handle_signals_on_the_loop(reactor)
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
    signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # type: ignore[operator]
    assert reactor.handled == []  # nothing ran inside the signal handler
    reactor.turn()
    assert reactor.handled == [("term", signal.SIGTERM), ("int", signal.SIGINT)]


def test_a_default_sigint_is_left_alone() -> None:
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        handle_signals_on_the_loop(Reactor())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_signal_during_the_log_lock_acquisition_does_not_wait_on_it(
        installed_by_twisted: None) -> None:
    # The log observer's lock, caught between its low-level acquire and the
    # record of its owner: what the main thread holds when the signal lands.
    threadable.init()  # what the reactor does: XLock exists once threads are on
    lock = threadable.XLock()
    lock._block.acquire()
    try:
        # Asked again from the same thread, as Twisted's handler's log line
        # would: it is not recognised as the owner and would wait (for ever).
        assert lock.acquire(timeout=0.05) is False
        reactor = Reactor()
        handle_signals_on_the_loop(reactor)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
        assert len(reactor.queued) == 1 and reactor.handled == []  # returned at once
    finally:
        lock._block.release()
