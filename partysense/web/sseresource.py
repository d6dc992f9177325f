"""``GET /events/<id>/stream`` and ``GET /events/ALL/stream``: admitted, or refused.

The request is read and checked (partysense/web/sserequest.py: Origin, path,
``Last-Event-ID``, token), then admitted as the WebSocket clients are (the
registry's --max-clients and --max-connections-per-ip, the address's budget of
subscribes and replayed rows); a request that fails one is answered with a
status and a JSON body, and no stream is made. One that passes them all
becomes a stream (partysense/web/sse.py), which takes it from there.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from partysense.core.addresses import network_of
from partysense.web.sse import Stream, Streams
from partysense.web.sserequest import (
    Refused,
    allow_origin,
    answer,
    client_address,
    event_of,
    granted,
    last_event_id,
    spend_budgets,
    wants_presence,
)


class EventStreams(Resource):
    """``/events/<id>/stream`` and ``/events/ALL/stream``."""

    isLeaf = True

    def __init__(self, streams: Streams) -> None:
        super().__init__()
        self._streams = streams

    def render_GET(self, request: Request) -> Any:
        streams = self._streams
        clients = streams.clients
        address = client_address(request, clients.trusted_proxies)
        try:
            allow_origin(request, clients.origins)
            event_id = event_of(request.postpath or [])
            since = last_event_id(request)
            grant = granted(request, streams.shared.tokens, streams.shared.clock.seconds(),
                            event_id)
            refused = clients.admission(address)
            if refused is not None:
                raise Refused(503 if refused.kind == "server_full" else 429, refused.kind,
                              refused.reason)
            reserved = spend_budgets(streams.shared, address, since)
        except Refused as refusal:
            if refusal.kind != "not_found":
                clients.counters.bad_input(refusal.kind)
            clients.quiet.info(network_of(address),
                               "Refused an SSE stream from {peer} ({kind}): {reason}",
                               peer=address, kind=refusal.kind, reason=refusal.message)
            answer(request, refusal)
            return NOT_DONE_YET
        stream = Stream(streams, request, event_id, since, grant, address, reserved)
        stream.wants_presence = wants_presence(request)
        stream.open()
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> bytes:
        request.setResponseCode(405)
        request.setHeader("allow", "GET")
        return b""
