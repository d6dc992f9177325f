"""``/status`` on the --admin-port: what an operator looks at first, in a browser.

One page (partysense/web/admin/: HTML, a script, a style sheet; nothing from
elsewhere, under a strict Content-Security-Policy) that reads
``/status/data`` every two seconds: the database link and the listener's
state, clients by dialect and by event, frames and votes per second over the
last five minutes, refusals and slow-client closes by reason, and the
addresses with the most clients.

:class:`Rates` samples two counters every ``step`` seconds (the hub's frames,
and the distinct changes the listener received: votes), so that the charts
have their history the moment the page opens. Everything else is read from
the daemon's objects when the page asks, as /metrics does.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from partysense.core.change import Change
from partysense.core.interfaces import ChangeSource, Link
from partysense.web.jsonanswer import json_body

# Seconds between samples, and how far back the charts go.
STEP = 2.0
SPAN = 300.0

# Rows of the longer tables: the busiest events and client addresses.
TOP = 15

# Only this daemon's own files: no inline script or style, no other origin,
# no frame around it.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

ASSETS = {
    b"status.js": ("status.js", "text/javascript; charset=utf-8"),
    b"status.css": ("status.css", "text/css; charset=utf-8"),
}


class Hub(Protocol):
    frames_sent: int

    def subscriber_counts(self) -> dict[str, int]: ...


class Counters(Protocol):
    bad_inputs: dict[str, int]
    slow_closed: int


class Limits(Protocol):
    max_clients: int


class Factory(Protocol):
    clients: Any  # a set of connected clients
    per_address: dict[str, int]

    @property
    def counters(self) -> Counters: ...
    @property
    def limits(self) -> Limits: ...

    def clients_by_dialect(self) -> dict[str, int]: ...


class QueueUsage(Protocol):
    usage: float | None


class Rates(TimerService):
    """Frames and votes per second, one point every ``step`` s for ``span`` s.

    Votes are the distinct changes the listener received: a change heard on
    its event's channel and on ``firehose`` counts once (changes come in
    ``seq`` order, live and replayed).
    """

    def __init__(self, hub: Hub, listener: ChangeSource, clock: IReactorTime,
                 step: float = STEP, span: float = SPAN) -> None:
        super().__init__(step, self.sample)
        self.clock = clock
        self._hub = hub
        self._clock = clock
        self._points: deque[tuple[float, float, float]] = deque(maxlen=int(span / step))
        self._last: tuple[float, int, int] | None = None
        self._last_seq = 0
        self.votes = 0
        listener.observe(self._changed)

    def _changed(self, channel: str, change: Change) -> None:
        if change.seq > self._last_seq:
            self._last_seq = change.seq
            self.votes += 1

    def sample(self) -> None:
        now, frames, votes = self._clock.seconds(), self._hub.frames_sent, self.votes
        if self._last is not None:
            then, frames_then, votes_then = self._last
            elapsed = now - then
            if elapsed > 0:
                self._points.append((now, (frames - frames_then) / elapsed,
                                     (votes - votes_then) / elapsed))
        self._last = (now, frames, votes)

    def history(self) -> dict[str, Any]:
        """``{"step", "until", "frames": [per second…], "votes": […]}``, oldest first."""
        return {
            "step": self.step,
            "span": self._points.maxlen * self.step if self._points.maxlen else 0,
            "until": self._points[-1][0] if self._points else None,
            "frames": [round(frames, 2) for _, frames, _ in self._points],
            "votes": [round(votes, 2) for _, _, votes in self._points],
        }


def _link(connection: Link) -> dict[str, Any]:
    return {"state": connection.state, "connected": connection.connected,
            "reason": connection.reason}


def _top(counts: dict[str, int], key: str, value: str) -> list[dict[str, Any]]:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP]
    return [{key: name, value: count} for name, count in ranked if count]


def snapshot(factory: Factory, hub: Hub, listener: ChangeSource, queries: Link,
             queue: QueueUsage, rates: Rates) -> dict[str, Any]:
    """What the status page shows, as JSON-ready data."""
    by_channel = hub.subscriber_counts()
    refusals = dict(factory.counters.bad_inputs)
    return {
        "pid": os.getpid(),
        "database": {
            "listener": _link(listener),
            "queries": _link(queries),
            "channels": len(listener.channels),
            "reconnects": listener.reconnects,
            "notifications": listener.notifications,
            "bad_notifications": listener.bad_notifications,
            "queue_usage": queue.usage if listener.connected else None,
        },
        "clients": {
            "total": len(factory.clients),
            "max": factory.limits.max_clients,
            "by_dialect": factory.clients_by_dialect(),
            "firehose": by_channel.pop("firehose", 0),
            "by_event": _top(by_channel, "channel", "subscribers"),
        },
        "refusals": _top(refusals, "kind", "count"),
        "slow_closed": factory.counters.slow_closed,
        "addresses": _top(factory.per_address, "address", "clients"),
        "rates": rates.history(),
    }


def _secure(request: Request, content_type: str) -> None:
    request.setHeader("content-type", content_type)
    request.setHeader("content-security-policy", CSP)
    request.setHeader("x-content-type-options", "nosniff")
    request.setHeader("referrer-policy", "no-referrer")
    request.setHeader("cache-control", "no-store")


class _File(Resource):
    isLeaf = True

    def __init__(self, name: str, content_type: str) -> None:
        super().__init__()
        self._body = resources.files("partysense.web").joinpath("admin", name).read_bytes()
        self._type = content_type

    def render_GET(self, request: Request) -> bytes:
        _secure(request, self._type)
        return self._body


class _Data(Resource):
    isLeaf = True

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._read = read

    def render_GET(self, request: Request) -> bytes:
        _secure(request, "application/json")
        return json_body(request, 200, self._read())


class StatusPage(Resource):
    """``/status`` (and ``/status/``): the page; ``/status/data``: its JSON;
    ``/status/status.js`` and ``/status/status.css``."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._page = _File("status.html", "text/html; charset=utf-8")
        self.putChild(b"", self._page)
        self.putChild(b"data", _Data(read))
        for path, (name, content_type) in ASSETS.items():
            self.putChild(path, _File(name, content_type))

    def render_GET(self, request: Request) -> bytes:
        return self._page.render_GET(request)


def status_page(factory: Factory, hub: Hub, listener: ChangeSource, queries: Link,
                queue: QueueUsage, rates: Rates) -> StatusPage:
    """The ``/status`` resource of one daemon."""
    return StatusPage(lambda: snapshot(factory, hub, listener, queries, queue, rates))
