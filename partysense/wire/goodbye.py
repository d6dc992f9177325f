"""Saying goodbye: every client is closed with 1001 when the daemon stops."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from partysense.core import errors
from partysense.wire.protocol import LiveFactory

log = Logger()


class ClientsService(service.Service):
    """Closes every client with 1001 when the daemon stops.

    Stopped before the ports and the database connections (tap.makeService's
    tree stops its children one at a time, last added first), and never
    waits longer than ``grace`` seconds: a client that does not answer its
    close frame is dropped.
    """

    def __init__(self, factory: LiveFactory, clock: Any, grace: float = 2.0) -> None:
        self._factory = factory
        self._clock = clock
        self._grace = grace

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        clients = list(self._factory.clients)
        for client in clients:
            self._quietly(client.close_with, errors.GOING_AWAY, "server shutting down")
        done: defer.Deferred[None] = defer.Deferred()

        def check(deadline: float) -> None:
            if not self._factory.clients or self._clock.seconds() >= deadline:
                for client in list(self._factory.clients):
                    self._quietly(client.abort)
                self._factory.stop_logs()  # their summaries now, no timer left behind
                done.callback(None)
            else:
                self._clock.callLater(0.05, check, deadline)

        check(self._clock.seconds() + self._grace)
        return done

    def _quietly(self, call: Any, *args: Any, **kwargs: Any) -> None:
        # One client failing to close must not leave the shutdown waiting
        # forever (twistd waits for this Deferred) nor spare the others.
        try:
            call(*args, **kwargs)
        except Exception:
            log.failure("Closing a client at shutdown failed")
