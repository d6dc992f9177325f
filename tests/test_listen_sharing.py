"""One LISTEN connection for everybody.

In process: the service tree from ``partysense.tap.makeService`` on a real
database and a loopback port, with Autobahn's own Twisted client; the proof
is ``pg_listening_channels()`` asked on the listener's own connection.
As users run it: 300 clients of a foreign library on a twistd process, and
``pg_stat_activity`` counting the daemon's connections.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import Counter
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from harness.daemon import Daemon, wait_for
from partysense.db.listener import ListenerService
from partysense.tap import Options, makeService
from tests import support
from tests.support import Party

# -- in process ---------------------------------------------------------------


class Client(WebSocketClientProtocol):
    """A seed client: records what it receives, tells when it opens and closes."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[int | None] = defer.Deferred()
        self.received: list[dict[str, Any]] = []

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback(code)

    def request(self, event: object) -> None:
        self.sendMessage(json.dumps({"event": event}).encode("utf-8"))


class Running:
    """The daemon's service tree, started in this process."""

    def __init__(self, top: MultiService, listener: ListenerService, port: int) -> None:
        self.top = top
        self.listener = listener
        self.port = port
        self.clients: list[Client] = []
        self.calls: Counter[tuple[str, str]] = Counter()

    async def connect(self, reactor: Any) -> Client:
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{self.port}/")
        factory.protocol = Client
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=10)
        client = await endpoint.connect(factory)
        await client.opened.addTimeout(10, reactor)
        self.clients.append(client)
        return client

    async def close(self, client: Client, reactor: Any) -> None:
        client.sendClose(1000)
        await client.closed.addTimeout(10, reactor)

    async def listening(self) -> set[str]:
        """What PostgreSQL says the listener's own connection LISTENs to."""
        rows = await self.listener.runQuery("SELECT pg_listening_channels()")
        return {row[0] for row in rows}

    async def listening_is(self, wanted: set[str]) -> bool:
        return await self.listening() == wanted


# This file's deadlines were 10 s; they stay so.
eventually = functools.partial(support.eventually, timeout=10.0)


@pytest_twisted.async_yield_fixture
async def running(db_dsn: str) -> Any:
    from twisted.internet import reactor

    options = Options()
    # --linger 0: UNLISTEN as soon as the last subscriber leaves (what these tests count).
    options.parseOptions(["--dsn", db_dsn, "--port", "tcp:0:interface=127.0.0.1",
                          "--linger", "0"])
    top = makeService(options, reactor=reactor)
    [listener] = [s for s in top if isinstance(s, ListenerService)]
    [web] = [s for s in top if isinstance(s, StreamServerEndpointService)]
    top.startService()
    try:
        port = await web._waitingForPort
        await listener.whenConnected()
        state = Running(top, listener, port.getHost().port)
        # Count what the hub asks of the listener, channel by channel.
        for name in ("listen", "unlisten"):
            original = getattr(listener, name)

            def counted(channel: str, _name: str = name, _original: Any = original) -> None:
                state.calls[(_name, channel)] += 1
                _original(channel)

            setattr(listener, name, counted)
        yield state
        for client in state.clients:
            if client.state != client.STATE_CLOSED:
                client.dropConnection(abort=True)
    finally:
        await top.stopService()


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_listen_once_per_channel_and_unlisten_after_the_last(
        running: Running, party: Party) -> None:
    from twisted.internet import reactor

    event_id, other_event = party.event("One"), party.event("Two")
    assert await running.listening() == set()

    crowd = [await running.connect(reactor) for _ in range(5)]
    for client in crowd[:3]:
        client.request(event_id)
    for client in crowd[3:]:
        client.request("ALL")
    wanted = {f"event_{event_id}", "firehose"}
    await eventually(lambda: running.listening_is(wanted),
                     "both channels to be LISTENed")
    assert running.calls == {("listen", f"event_{event_id}"): 1, ("listen", "firehose"): 1}

    # A vote reaches all five through the one connection.
    party.vote(event_id, party.track(), up=True)
    await eventually(lambda: all(c.received for c in crowd), "the vote to reach everybody")

    # Two of the three leave: the channel stays.
    for client in crowd[:2]:
        await running.close(client, reactor)
    # (The server closes TCP after it has handled the close, so it has.)
    assert await running.listening() == wanted
    assert running.calls[("unlisten", f"event_{event_id}")] == 0

    # The last one moves to another event: event_<id> is UNLISTENed, once.
    crowd[2].request(other_event)
    moved = {f"event_{other_event}", "firehose"}
    await eventually(lambda: running.listening_is(moved),
                     "the subscription to move")
    assert running.calls[("unlisten", f"event_{event_id}")] == 1

    # Everybody leaves: nothing is LISTENed any more.
    for client in crowd[2:]:
        await running.close(client, reactor)
    await eventually(lambda: running.listening_is(set()),
                     "every channel to be UNLISTENed")
    assert all(count == 1 for count in running.calls.values())
    assert set(running.calls) == {
        (op, channel) for op in ("listen", "unlisten")
        for channel in (f"event_{event_id}", f"event_{other_event}", "firehose")}


# -- as users run it ------------------------------------------------------------

CROWD = 300


def listener_connections(party: Party) -> int:
    rows = party.query(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'partysense-live'")
    return int(rows[0][0])


async def open_crowd(url: str, requests: list[object]) -> list[ClientConnection]:
    clients = []
    for request in requests:
        client = await ws_connect(url, open_timeout=30, compression=None, max_queue=None)
        await client.send(json.dumps({"event": request}))
        clients.append(client)
    return clients


async def next_change(client: ClientConnection, vote_id: int, op: str) -> dict[str, Any]:
    """Skip older changes until the one for ``vote_id`` and ``op`` arrives."""
    while True:
        message = json.loads(await asyncio.wait_for(client.recv(), 30))
        if (message["vote"], message["op"]) == (vote_id, op):
            return message


async def crowd_hears_votes(daemon: Daemon, party: Party, event_id: int,
                            track_id: int) -> None:
    requests: list[object] = [event_id if i % 2 else "ALL" for i in range(CROWD)]
    clients = await open_crowd(daemon.ws_url, requests)
    try:
        # No acknowledgement in the seed dialect: vote until every client has
        # heard something, so every subscription is in place.
        heard: set[int] = set()

        async def drain(index: int, client: ClientConnection) -> None:
            await client.recv()
            heard.add(index)

        waiters = [asyncio.ensure_future(drain(i, c)) for i, c in enumerate(clients)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(heard) < CROWD:
            assert loop.time() < deadline, f"only {len(heard)} of {CROWD} clients heard a vote"
            await asyncio.to_thread(party.vote, event_id, track_id, True)
            await asyncio.wait(waiters, timeout=0.5)
        assert await asyncio.to_thread(listener_connections, party) == 1

        vote_id = await asyncio.to_thread(party.vote, event_id, track_id, False)
        inserted = await asyncio.gather(*(next_change(c, vote_id, "insert") for c in clients))
        updated = await asyncio.gather(*(next_change(c, vote_id, "update") for c in clients))
        assert len({json.dumps(m, sort_keys=True) for m in inserted}) == 1
        assert {(m["up"], m["prev"]) for m in updated} == {(False, True)}
        assert len(updated) == CROWD
        health = daemon.health()
        assert health is not None and health[1]["clients"] == CROWD
        assert await asyncio.to_thread(listener_connections, party) == 1
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


@pytest.mark.daemon
@pytest.mark.slow
def test_300_clients_one_database_connection(daemon: Daemon, party: Party) -> None:
    event_id, track_id = party.event("Crowded"), party.track()
    asyncio.run(crowd_hears_votes(daemon, party, event_id, track_id))
    wait_for(lambda: daemon.health()[1]["clients"] == 0, 20, "the crowd to disconnect")
    assert listener_connections(party) == 1
