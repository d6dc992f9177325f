"""Hundreds of WebSocket clients that reconnect, as phones do, in one thread.

Each client loops: connect, subscribe, read until the connection ends, wait
(capped exponential backoff with equal jitter, the page's rule at a smaller
scale), connect again. A seed client sends its request again and records
what it receives per connection (a :attr:`SeedFollower.spans` entry each);
a v2 client resumes from its cursor (the highest ``seq`` it applied) and
keeps tallies from its snapshot and the changes.

All clients run as tasks of one asyncio loop in a thread: 400 clients are
400 sockets, not 400 threads. The test reads their state from its own
thread (appends and assignments only; the checks run once they are quiet).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from harness.daemon import wait_for

# Seconds; the page starts at 0.5 s and caps at 15 s. At least 60 ms between a
# loss and the next try: a seed floor may be 50 ms old (partysense/reads/floors.py).
BACKOFF_FIRST = 0.12
BACKOFF_CAP = 1.0
SUBPROTOCOL = "partysense.v2"

Channel = int | None  # an event id, or None for every event ("ALL")


def backoff(attempt: int) -> float:
    """Between half and all of min(cap, first x 2^attempt), like the page."""
    ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** attempt)
    return ceiling / 2 + random.random() * ceiling / 2


class Follower:
    """What every client keeps: its connections, losses and recoveries."""

    subprotocols: Sequence[str] | None = None

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.live = False           # subscribed on an open connection
        self.sessions = 0           # connections that opened
        self.disconnects = 0        # ... and then ended
        self.refused: dict[str, int] = {}  # failed attempts, by reason
        self.lost_at: list[float] = []     # when each session ended
        self.back_at: list[float] = []     # when live again after each
        self.problems: list[str] = []

    @property
    def event(self) -> int | str:
        return "ALL" if self.channel is None else self.channel

    async def run(self, url: str, stopping: asyncio.Event) -> None:
        attempt = 0
        while not stopping.is_set():
            try:
                async with connect(url, subprotocols=self.subprotocols,  # type: ignore[arg-type]
                                   open_timeout=10, close_timeout=1, max_queue=None) as ws:
                    self.sessions += 1
                    attempt = 0
                    await self.session(ws)
            except InvalidStatus as error:
                self._refuse(f"HTTP {error.response.status_code}")
            except (OSError, TimeoutError, WebSocketException) as error:
                if self.live:
                    self._lose()
                else:
                    self._refuse(type(error).__name__)
            except asyncio.CancelledError:
                return
            except Exception as error:  # a bug of ours, or a frame we cannot read
                self.problems.append(f"gave up: {error!r}")
                self.live = False
                return
            else:
                if self.live:
                    self._lose()
            if stopping.is_set():
                return
            try:
                await asyncio.wait_for(stopping.wait(), backoff(attempt))
            except TimeoutError:
                pass
            attempt += 1

    def _refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def _lose(self) -> None:
        self.live = False
        self.disconnects += 1
        self.lost_at.append(time.monotonic())

    def _became_live(self) -> None:
        self.live = True
        if len(self.back_at) < len(self.lost_at):
            self.back_at.append(time.monotonic())

    async def session(self, ws: ClientConnection) -> None:
        raise NotImplementedError


class SeedFollower(Follower):
    """The old Node protocol: one request per connection, no acknowledgement,
    no resume. ``spans[k]`` is the seqs received on the k-th connection."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(channel)
        self.spans: list[list[int]] = []

    async def session(self, ws: ClientConnection) -> None:
        await ws.send(json.dumps({"event": self.event}))
        span: list[int] = []
        self.spans.append(span)
        self._became_live()  # as live as a seed client can know
        async for text in ws:
            change = json.loads(text)
            if self.channel is not None and change.get("eid") != self.channel:
                self.problems.append(f"a change of event {change.get('eid')}")
            span.append(int(change["seq"]))

    def received(self) -> int:
        return sum(len(span) for span in self.spans)


class V2Follower(Follower):
    """partysense.v2: snapshot (an event) or replay from 0 (the firehose),
    then changes; after a reconnect, a subscribe with the cursor.

    ``counts`` is {(event, track): [up, down]}; ``seqs`` every change applied.
    """

    subprotocols = (SUBPROTOCOL,)

    def __init__(self, channel: Channel) -> None:
        super().__init__(channel)
        # The firehose has no snapshot: it starts from the beginning of the log.
        self.cursor: int | None = None if channel is not None else 0
        self.first_cursor: int | None = self.cursor
        self.counts: dict[tuple[int, int], list[int]] = {}
        self.seqs: list[int] = []
        self.resets = 0

    async def session(self, ws: ClientConnection) -> None:
        request: dict[str, Any] = {"type": "subscribe", "event": self.event, "id": self.sessions}
        if self.cursor is not None:
            request["cursor"] = self.cursor
        await ws.send(json.dumps(request))
        async for text in ws:
            message = json.loads(text)
            kind = message.get("type")
            if kind == "change":
                self._apply(message)
            elif kind == "snapshot":
                self._snapshot(message)
            elif kind == "subscribed":
                if self.cursor != message.get("cursor"):
                    self.problems.append(f"subscribed from {message.get('cursor')}, "
                                         f"asked {self.cursor}")
                self._became_live()
            elif kind == "error":
                # "unavailable" (the daemon's database is away): come back later.
                self._refuse(f"error {message.get('error')}")
                return

    def _snapshot(self, message: dict[str, Any]) -> None:
        if self.cursor is not None:
            self.resets += 1  # the log no longer reached back: start over
        event = int(message["event"])
        self.counts = {(event, int(t["tid"])): [int(t["up"]), int(t["down"])]
                       for t in message["tracks"]}
        self.cursor = int(message["cursor"])
        if self.first_cursor is None:
            self.first_cursor = self.cursor
        self._became_live()

    def _apply(self, change: dict[str, Any]) -> None:
        seq = int(change["seq"])
        if self.cursor is None or not self.live:
            self.problems.append(f"change {seq} before the subscription's answer")
            return
        if seq <= self.cursor:
            self.problems.append(f"change {seq} again or out of order (cursor {self.cursor})")
            return
        self.cursor = seq
        self.seqs.append(seq)
        up = self.counts.setdefault((int(change["eid"]), int(change["tid"])), [0, 0])
        if change["op"] in ("update", "delete"):
            up[0 if change["prev"] else 1] -= 1
        if change["op"] in ("insert", "update"):
            up[0 if change["up"] else 1] += 1

    def tallies(self) -> dict[tuple[int, int], tuple[int, int]]:
        """Like SQL's GROUP BY event, track: tracks with no votes left out."""
        return {key: (up, down) for key, (up, down) in self.counts.items() if up or down}


class Crowd:
    """``followers`` connected to ``url``, each reconnecting, until :meth:`stop`."""

    def __init__(self, url: str, followers: Sequence[Follower]) -> None:
        self.url = url
        self.followers = list(followers)
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crowd", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._started.set()
        tasks = [asyncio.create_task(f.run(self.url, self._stopping)) for f in self.followers]
        await self._stopping.wait()
        for task in tasks:  # a client reading its socket would not notice by itself
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def seed(self) -> list[SeedFollower]:
        return [f for f in self.followers if isinstance(f, SeedFollower)]

    @property
    def v2(self) -> list[V2Follower]:
        return [f for f in self.followers if isinstance(f, V2Follower)]

    def not_live(self) -> list[Follower]:
        return [f for f in self.followers if not f.live]

    def wait_live(self, timeout: float = 60.0) -> None:
        wait_for(lambda: not self.not_live(), timeout,
                 f"every client to be subscribed ({len(self.not_live())} are not)")

    def refused(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for follower in self.followers:
            for reason, count in follower.refused.items():
                total[reason] = total.get(reason, 0) + count
        return total

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(30)
