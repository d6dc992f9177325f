"""Telling systemd when the daemon is ready (``Type=notify``), and when it stops.

systemd's notification protocol is one datagram to the socket named by
``$NOTIFY_SOCKET`` (sd_notify(3)); a few lines, so no dependency. READY=1 is
sent once the port listens and both database connections are up, so that
units ordered after this one, and a restart that waits for it, see a daemon
that serves; STOPPING=1 at the start of shutdown. No watchdog: the listener's
own probe already notices a database that went silent, and a daemon that
stops answering is what the load balancer's health check is for.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

log = Logger()


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` to systemd; False when not run by systemd (or it failed)."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as error:
        log.warn("Could not notify systemd ({state}): {error}", state=state, error=error)
        return False
    return True


class SystemdNotifier(Service):
    """READY=1 once ``ready()`` fires, STOPPING=1 when stopped. Added to the
    service tree last, so that it starts after the port listens and stops first."""

    def __init__(self, ready: Any) -> None:
        self._ready = ready  # a callable returning a Deferred that fires when serving
        self._waiting: defer.Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        self._waiting = self._ready()
        self._waiting.addCallback(lambda _: notify("READY=1\nSTATUS=serving"))
        self._waiting.addErrback(lambda failure: None)  # stopped before it was ready

    def stopService(self) -> None:
        super().stopService()
        if self._waiting is not None and not self._waiting.called:
            self._waiting.cancel()
        notify("STOPPING=1")
