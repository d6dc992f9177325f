"""A seed client gets what commits after its request, never what committed before.

Behind a load balancer a seed client that lost its daemon reconnects to
another one, which may not have read the latest changes yet (each daemon
reads the log at its own pace). Had the new daemon handed it everything it
read after the request, the client would have got again a change that the
first daemon had already sent it (tests/test_scaleout.py saw that). The
listener here plays the lagging daemon: the vote commits while the reactor
is blocked, so the client's request is read before the listener has read
the vote's changes. The listener and the database are real; the clients are
LiveProtocols over StringTransports (tests/wire.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from partysense.core.hub import Hub
from partysense.db.listener import ListenerService
from partysense.db.queries import QueryService
from partysense.dialects.dialect import ClientCounters, Shared
from partysense.reads.events import EventDirectory
from partysense.reads.sharedreads import SharedReads
from partysense.tap import dialect_table
from partysense.wire.protocol import Limits, LiveFactory, LiveProtocol
from tests.support import Party, eventually
from tests.wire import Transport, messages, opened, send_json

pytestmark = pytest.mark.database


@pytest_twisted.async_yield_fixture
async def seed_clients(db_dsn: str) -> Any:
    """A function making seed clients of a daemon's real listener and query connection."""
    from twisted.internet import reactor

    listener = ListenerService(db_dsn, reactor)
    queries = QueryService(db_dsn, reactor)
    counters = ClientCounters()
    # floor_age=0: every floor from a read that starts after the request. The
    # client here "comes back" within microseconds of the vote, faster than
    # any real client reconnects; with the default (a read up to 50 ms old)
    # it could get the vote twice, as partysense/reads/floors.py explains.
    reads = SharedReads(queries, reactor, floor_age=0)
    shared = Shared(hub=Hub(listener), listener=listener, reads=reads,
                    events=EventDirectory(queries, reactor), counters=counters,
                    clock=reactor)
    factory = LiveFactory(dialect_table(shared), reactor, Limits(ping_interval=0), counters)
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    made: list[LiveProtocol] = []

    def seed_client() -> tuple[LiveProtocol, Transport]:
        transport = Transport()
        protocol = opened(factory, transport)
        transport.clear()  # the handshake's answer
        made.append(protocol)
        return protocol, transport

    listener.startService()
    queries.startService()
    try:
        await listener.whenConnected()
        await queries.whenConnected()
        yield seed_client, listener
        for client in made:
            if client.state != client.STATE_CLOSED:
                client.connectionLost(Failure(ConnectionDone()))
    finally:
        await queries.stopService()
        await listener.stopService()


def seqs(transport: Transport) -> list[int]:
    return [change["seq"] for change in messages(transport)]


@pytest_twisted.ensureDeferred
async def test_a_seed_client_gets_nothing_committed_before_its_request(
        seed_clients: Any, party: Party) -> None:
    seed_client, listener = seed_clients
    event_id, track_id = party.event(), party.track()
    first, first_seen = seed_client()
    send_json(first, {"event": event_id})
    await eventually(lambda: f"event_{event_id}" in listener.channels, "the LISTEN")

    # Committed while the reactor waits (psycopg2 blocks it): the listener
    # has not read these changes when the next client's request is read.
    party.vote(event_id, track_id)
    before = [seq for seq, in party.query("SELECT seq FROM partysense_change ORDER BY seq")]
    late, late_seen = seed_client()
    send_json(late, {"event": event_id})  # what a client that had them from elsewhere asks
    await eventually(lambda: seqs(first_seen) == before, "the first client to get the vote")

    party.vote(event_id, track_id, up=False, user_id=2)
    after = [seq for seq, in party.query(
        "SELECT seq FROM partysense_change WHERE seq > %s ORDER BY seq", (before[-1],))]
    await eventually(lambda: seqs(first_seen) == before + after, "the second vote")
    await eventually(lambda: seqs(late_seen)[-1:] == after[-1:], "the late client's last change")
    assert seqs(late_seen) == after  # and none of the vote committed before its request
