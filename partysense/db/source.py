"""Where the daemon's changes come from: the one place a change source is chosen.

Every layer above db/ sees the source only as a
:class:`~partysense.core.interfaces.ChangeSource`. Today there is one kind,
``listen``: LISTEN/NOTIFY as a doorbell and the change log read on each ring
(partysense/db/listener.py). Another kind (a logical-decoding reader, issue
18) is added here, and chosen in tap.py, without touching the hub, the
dialects, the reads or the web layer.
"""

from __future__ import annotations

from typing import Protocol

from twisted.application.service import IServiceCollection
from twisted.internet.interfaces import IReactorTime

from partysense.core.interfaces import ChangeSource
from partysense.db.dsn import DSNSource
from partysense.db.listener import ListenerService

LISTEN = "listen"
KINDS = (LISTEN,)


class SourceService(ChangeSource, Protocol):
    """A change source that is also a service of the daemon's tree."""

    def setServiceParent(self, parent: IServiceCollection) -> None: ...


def make_source(kind: str, dsn: DSNSource, reactor: IReactorTime,
                grace: float) -> SourceService:
    """The change source of ``kind`` (one of KINDS), reading the database at ``dsn``.

    ``grace``: seconds after start during which clients wait for it to connect.
    """
    if kind == LISTEN:
        return ListenerService(dsn, reactor, grace=grace)
    raise ValueError(f"no change source {kind!r}: one of {', '.join(KINDS)}")
