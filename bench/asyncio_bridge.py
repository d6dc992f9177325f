"""A plain asyncio bridge from PostgreSQL NOTIFY to WebSocket clients: the floor
that bench.run measures partysense-live against (docs/performance.md).

It speaks the old Node service's protocol: a client sends ``{"event": <id>}``
(or ``{"event": "ALL"}``) and then receives, as text frames, the payload of
every NOTIFY on ``event_<id>`` (or ``firehose``), as the trigger wrote it. Unlike
the Node service, one PostgreSQL connection LISTENs for every client, once per
channel, from the first client that asks for it.

What it does not do, on purpose: no catch-up (a client misses whatever was
notified before its LISTEN, and a lost database connection ends the process),
no exactness, no bound on what a slow client's buffer holds, and it forwards
any NOTIFY on those channels, whoever sent it. It imports nothing of
partysense: it is the yardstick, not the product.

    python -m bench.asyncio_bridge --port 18854 [--dsn postgresql://user@host/db]

Without --dsn, asyncpg reads the PG* environment variables, as node-postgres does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import defaultdict

import asyncpg
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosedError

USAGE = 'send {"event": <id>} or {"event": "ALL"}'


def channel_for(message: str | bytes) -> str | None:
    """The channel a configuration message asks for, or None if it is not one."""
    try:
        event = json.loads(message)["event"]
    except (ValueError, TypeError, KeyError):
        return None
    if event == "ALL":
        return "firehose"
    if isinstance(event, int) and not isinstance(event, bool):
        return f"event_{event}"
    if isinstance(event, str) and event.isascii() and event.isdigit():
        return f"event_{event}"  # "5" as well as 5, as the Node service concatenated it
    return None


class Bridge:
    """One LISTEN connection, and the WebSocket clients of each channel."""

    def __init__(self, database: asyncpg.Connection) -> None:
        self.database = database
        self.subscribers: defaultdict[str, set[ServerConnection]] = defaultdict(set)
        self.listening: set[str] = set()
        self.lock = asyncio.Lock()  # one statement at a time on one connection

    def forward(self, _connection: object, _pid: int, channel: str, payload: str) -> None:
        broadcast(self.subscribers[channel], payload)

    async def subscribe(self, websocket: ServerConnection, channel: str) -> None:
        self.subscribers[channel].add(websocket)
        async with self.lock:
            if channel not in self.listening:
                await self.database.add_listener(channel, self.forward)
                self.listening.add(channel)

    async def serve_client(self, websocket: ServerConnection) -> None:
        channels: set[str] = set()
        try:
            async for message in websocket:
                channel = channel_for(message)
                if channel is None:
                    await websocket.close(1008, USAGE)
                    return
                channels.add(channel)
                await self.subscribe(websocket, channel)
        except ConnectionClosedError:
            pass  # the client went away without a closing handshake
        finally:
            for channel in channels:
                self.subscribers[channel].discard(websocket)


async def main(port: int, dsn: str | None, host: str) -> int:
    database = await asyncpg.connect(dsn)
    bridge = Bridge(database)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def finish(code: int) -> None:
        if not done.done():
            done.set_result(code)

    database.add_termination_listener(lambda _connection: finish(1))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, finish, 0)
    # As the Node service's ws server: no compression, no keepalive pings.
    async with serve(bridge.serve_client, host, port, compression=None,
                     ping_interval=None, backlog=4096):
        print(f"Listening on {host}:{port}", flush=True)
        code = await done
    if code:
        print("The database connection was lost", file=sys.stderr, flush=True)
    await database.close()
    return code


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.asyncio_bridge",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=18854)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dsn", help="a postgresql:// URI; default: the PG* variables")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main(args.port, args.dsn, args.host))
    return uvloop.run(main(args.port, args.dsn, args.host))


if __name__ == "__main__":
    sys.exit(run())
