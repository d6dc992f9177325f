"""Where the daemon's changes come from: the one place a change source is chosen.

Every layer above db/ sees the source only as a
:class:`~partysense.core.interfaces.ChangeSource`. Two kinds, chosen in
tap.py (``--source``):

- ``listen`` (the default): the voters' triggers write the change log and
  NOTIFY each change signed; the listener believes what checks out and reads
  the log to catch up (partysense/db/listener.py).
- ``wal``: no trigger on the voters' transactions; the daemon holding the
  database's replication slot writes the change log (and the tallies) from
  the WAL (partysense/db/walrelay.py), and every daemon reads the log with
  the very same listener. So the layers above, the cursor and everything
  docs/exactness.md proves are the listen mode's (its §8).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application.service import IServiceCollection
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from partysense.core.interfaces import ChangeSource
from partysense.db.dsn import DSNSource
from partysense.db.listener import ListenerService
from partysense.db.txpostgres_adapter import PgConnection
from partysense.db.walrelay import WalRelay

LISTEN = "listen"
WAL = "wal"
KINDS = (LISTEN, WAL)

# Has a relay ever made the slot and counted the tallies? Until then the
# tallies are not the log's, and no snapshot may be taken from them.
RELAY_READY_QUERY = "SELECT count(*) FROM partysense_relay"
RELAY_READY_POLL = 0.25  # seconds


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
    if kind == WAL:
        return WalSource(dsn, reactor, grace=grace)
    raise ValueError(f"no change source {kind!r}: one of {', '.join(KINDS)}")


class WalSource(ListenerService):
    """The WAL mode's change source: the listener, and this daemon's relay candidate.

    The listener reads the log the relay writes (whichever daemon's relay
    holds the slot). Its connection counts as ready only once a relay has
    made the slot at least once (``partysense_relay`` has its row): before
    that the log and the tallies are not yet the WAL's.
    """

    def __init__(self, dsn: DSNSource, reactor: IReactorTime, **options: Any) -> None:
        # Logged as the listener it is, so that log queries and alerts on the
        # listener's namespace keep working in WAL mode. (An instance attribute:
        # a class one would be named after this class.)
        self.log = Logger(namespace="partysense.db.listener.ListenerService", source=self)
        super().__init__(dsn, reactor, **options)
        self._relay = WalRelay(dsn, reactor)
        self._clock = reactor
        self.relay = self._relay
        # A slot made again empties the log and recounts the tallies: whoever
        # keeps tallies or cursors from before must read afresh.
        self._relay.on_reset(self._fanout.started_over)

    def startService(self) -> None:
        self._relay.startService()
        super().startService()

    def stopService(self) -> defer.Deferred[None]:
        stopped = super().stopService()
        return defer.gatherResults([stopped, self._relay.stopService()]).addCallback(
            lambda _: None)

    @defer.inlineCallbacks
    def _resume(self, connection: PgConnection) -> Any:
        said = False
        while not (yield self._keeper.step(connection, connection.runQuery(
                RELAY_READY_QUERY)))[0][0]:
            if not said:  # the relay of this daemon or another's is making it
                self.log.info("Waiting for a WAL relay to make its slot.")
                said = True
            yield task.deferLater(self._clock, RELAY_READY_POLL, lambda: None)
            if connection is not self._keeper.connection:
                return  # lost or stopped meanwhile: the keeper says so
        yield super()._resume(connection)
