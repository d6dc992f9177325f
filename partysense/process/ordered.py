"""The parent of both service trees: children stop one after the other.

Twisted's ``MultiService`` stops its children all at once. Both trees need
an order instead: clients must hear 1001 while the ports and the database
connections are still there, and the embedded PostgreSQL must outlive
everything that uses it. So the children are stopped last started first,
each only once the one after it has finished stopping.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

log = Logger()


class InOrder(service.MultiService):
    """Stops its services one after the other, last started first.

    A child whose stop fails is logged and does not keep the others running.
    """

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        service.Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("Stopping {service} failed", service=child)
