"""A deadline for a database answer that a busy reactor cannot fake.

Every step of keeping a connection (connecting, preparing it, the probe)
has one (partysense/db/pgservice.py): txpostgres has none of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime


class Droppable(Protocol):
    def drop(self, why: str) -> None: ...


def before_deadline(clock: IReactorTime, connection: Droppable, d: defer.Deferred[Any],
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
        timers.append(clock.callLater(0, expire))

    def expire() -> None:
        if alive is not None and alive():
            timers.append(clock.callLater(seconds, confirm))
        else:
            connection.drop(why)

    timers.append(clock.callLater(seconds, confirm))

    def disarm(result: Any) -> Any:
        for timer in timers:
            if timer.active():
                timer.cancel()
        return result

    return d.addBoth(disarm)
