"""The one port: the WebSocket and the live page at ``/``, plus health.

``GET /`` with an ``Upgrade: websocket`` header is a WebSocket (the seed
clients connect to ``ws://host:18854``); without it, the live page.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import Data

from partysense.core.interfaces import ChangeSource, Link, Queries
from partysense.core.singleflight import SingleFlight
from partysense.db.pgservice import NotConnected
from partysense.dialects.tokens import OPEN, Tokens
from partysense.web.clientjs import ClientScript
from partysense.web.headers import SecurityHeaders
from partysense.web.httpguard import GuardedSite, token_refusal
from partysense.web.jsonanswer import LaterAnswer, json_body
from partysense.web.pulse import EventPulse, Exists, PulseReads, event_id_of
from partysense.web.sse import Streams
from partysense.web.sserequest import client_address
from partysense.web.sseresource import EventStreams
from partysense.wire.protocol import LiveFactory
from partysense.wire.upgrade import taken_over
from partysense.wire.waiting import Waiting

# Connections to --admin-port at once (scrapers, a health check): the oldest
# idle one is closed for a newcomer past these.
ADMIN_WAITING = 16


STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class PageOrWebSocket(Resource):
    """``/``: hands WebSocket upgrades to Autobahn, serves the page otherwise."""

    isLeaf = True

    def __init__(self, websocket: WebSocketResource, page: Resource) -> None:
        super().__init__()
        self._websocket = websocket
        self._page = page

    def render(self, request: Request) -> Any:
        upgrade = (request.getHeader("upgrade") or "").lower()
        if upgrade == "websocket":
            taken_over(request.channel)
            return self._websocket.render(request)
        return self._page.render(request)


class Health(Resource):
    """``/healthz``: 200 when both database connections are up, else 503.

    Both: without the listener no vote arrives; without the query
    connection no v2 client gets its snapshot. On the public port it says
    that and nothing else (libpq's errors name hosts and users; the channels
    say which events are watched); ``detailed`` (the --admin-port) says why,
    and more.
    """

    isLeaf = True

    def __init__(self, listener: ChangeSource, queries: Link, factory: LiveFactory,
                 detailed: bool = False) -> None:
        super().__init__()
        self._listener = listener
        self._queries = queries
        self._factory = factory
        self._detailed = detailed

    def render_GET(self, request: Request) -> bytes:
        healthy = self._listener.connected and self._queries.connected
        body: dict[str, Any] = {"status": "ok" if healthy else "unavailable"}
        if self._detailed:
            body.update({
                "listener": self._listener.state,
                "queries": self._queries.state,
                "reason": self._listener.reason or (
                    "" if self._queries.connected
                    else f"query connection: {self._queries.reason}"),
                "channels": sorted(self._listener.channels),
                # False: no signing keys, a read of the log per notification (docs/security.md)
                "signed": self._listener.signed,
                "clients": len(self._factory.clients),
                "pid": os.getpid(),  # which process answered (several with --workers)
            })
            relay = self._listener.relay
            if relay is not None:  # --source wal
                body["relay"] = {"state": relay.state, "reason": relay.reason,
                                 "slot_lag_bytes": relay.slot_lag_bytes,
                                 "slot_wal_status": relay.slot_wal_status}
        return json_body(request, 200 if healthy else 503, body)


EVENTS_QUERY = "SELECT id, title FROM event_event ORDER BY id DESC LIMIT 500"


class EventList(Resource):
    """``/api/events``: the newest events as ``[{"id": 3, "title": "..."}]``, for
    the page's picker; 503 with a reason while the database is unreachable.

    The list is read at most once every ``ttl`` seconds, and requests that
    come while it is being read share that read: anyone can ask, as often as
    they like, and the database answers a few times a minute.
    """

    _log = Logger()

    def __init__(self, queries: Queries, clock: Any, tokens: Tokens = OPEN,
                 ttl: float = 5.0, pulse: Resource | None = None) -> None:
        super().__init__()
        self._pulse = pulse
        self._queries = queries
        self._clock = clock
        self._tokens = tokens
        self._list: SingleFlight[None, Any] = SingleFlight(clock, keep=ttl)

    @property
    def queries(self) -> int:
        return self._list.calls

    def getChild(self, path: bytes, request: Request) -> Resource:
        # /api/events/ is the list; /api/events/<id>/pulse an event's pulse.
        if path == b"":
            return self
        if self._pulse is not None and event_id_of(path) is not None:
            return self._pulse
        return NoResource()

    def _events(self) -> Any:
        kept = self._list.kept(None)
        if kept is not None:
            return defer.succeed(kept.value)
        if not self._queries.connected:
            # The picker can say "try again"; no need to hold the request.
            return defer.fail(NotConnected("the database is unreachable"))
        return self._list.ask(None, lambda: defer.maybeDeferred(self._queries.runQuery,
                                                                 EVENTS_QUERY))

    def render_GET(self, request: Request) -> Any:
        answer = LaterAnswer(request)

        def failed(failure: Any) -> None:
            if not failure.check(NotConnected):
                self._log.failure("Listing events failed", failure)
            answer(503, {"error": "unavailable", "message": "the database is unreachable"})

        # With tokens on, the list of every event needs a token for every event.
        refusal = token_refusal(self._tokens, request, self._clock.seconds(), None)
        if refusal is not None:
            answer(*refusal)
            return NOT_DONE_YET

        self._events().addCallbacks(
            lambda rows: answer(200, [{"id": i, "title": t} for i, t in rows]), failed)
        return NOT_DONE_YET


def static_file(name: str, client: ClientScript | None = None) -> Data:
    """A file from partysense/static, read once at start-up (a script's import
    of /client.js versioned)."""
    body = resources.files("partysense.web").joinpath("static", name).read_bytes()
    suffix = name[name.rfind("."):]
    if client is not None and suffix == ".js":
        body = client.versioned(body)
    return Data(body, STATIC_TYPES.get(suffix, "application/octet-stream"))


def static_folder(client: ClientScript) -> Resource:
    folder = Resource()
    for entry in resources.files("partysense.web").joinpath("static").iterdir():
        if entry.is_file() and not entry.name.startswith(".") and entry.name != "client.js":
            folder.putChild(entry.name.encode("utf-8"), static_file(entry.name, client))
    return folder


def make_site(factory: LiveFactory, listener: ChangeSource, queries: Queries,
              metrics: Resource | None, clock: Any, handshake_timeout: float = 10.0,
              tokens: Tokens = OPEN, streams: Streams | None = None,
              headers: SecurityHeaders | None = None,
              waiting: Waiting | None = None,
              exists: Exists | None = None) -> GuardedSite:
    """The resource tree of the public port.

    ``metrics`` is served at /metrics here only when there is no admin port.
    ``handshake_timeout`` closes an HTTP connection that has not upgraded to
    a WebSocket that long after connecting (partysense/web/httpguard.py).
    ``streams``: the Server-Sent Events at /events/<id>/stream (partysense/web/sse.py).
    ``headers``: the security headers of every answer (--frame-ancestors;
    partysense/web/headers.py).
    ``waiting``: the connections not yet upgraded, bounded per address and in
    all (partysense/wire/waiting.py); None: limits.MAX_WAITING in all, none per address.
    ``exists``: the event directory, so that the pulse of no event costs no query.
    """
    root = Resource()
    root.putChild(b"", PageOrWebSocket(WebSocketResource(factory), static_file("index.html")))
    root.putChild(b"healthz", Health(listener, queries, factory))
    client = ClientScript.packaged()
    root.putChild(b"client.js", client)  # at the root: docs/client.md
    root.putChild(b"static", static_folder(client))
    api = Resource()
    pulse = EventPulse(PulseReads(queries, clock), clock, tokens, exists,
                       trusted_proxies=int(getattr(factory, "trustXForwardedFor", 0)))
    api.putChild(b"events", EventList(queries, clock, tokens, pulse=pulse))
    root.putChild(b"api", api)
    if streams is not None:
        root.putChild(b"events", EventStreams(streams))
    if metrics is not None:
        root.putChild(b"metrics", metrics)
    # One access log for the port: requests, WebSockets and SSE streams share
    # each address's budget, keyed by the client's address as the limits read it.
    site = GuardedSite(root, clock, handshake_timeout, waiting, headers=headers,
                       access=factory.access_log,
                       address_of=lambda request: client_address(
                           request, int(getattr(factory, "trustXForwardedFor", 0))),
                       websocket=factory)  # whole upgrade requests for / skip twisted.web
    return site


def make_admin_site(factory: LiveFactory, listener: ChangeSource, queries: Queries,
                    metrics: Resource, clock: Any, status: Resource | None = None) -> GuardedSite:
    """The --admin-port: /metrics and a detailed /healthz, for operators only;
    ``status``, the page (partysense/web/status.py), at /status and at /."""
    root = Resource()
    root.putChild(b"healthz", Health(listener, queries, factory, detailed=True))
    root.putChild(b"metrics", metrics)
    if status is not None:
        root.putChild(b"status", status)
        root.putChild(b"", status)
    # Its connections come out of the files reserved beside the clients'
    # (limits.RESERVED_FILES): a few at once, the oldest idle one closed for a newcomer.
    site = GuardedSite(root, clock, handshake_timeout=10.0, waiting=Waiting(ADMIN_WAITING),
                       name="AdminSite")
    return site
