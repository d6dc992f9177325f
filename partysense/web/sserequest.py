"""Reading a Server-Sent Events request, and answering one that is refused.

The path (``/events/<id>/stream``), where to resume (``Last-Event-ID`` or
``?last_event_id=``), the token (``Authorization: Bearer`` or ``?token=``),
the Origin (CORS for pages elsewhere: an overlay) and the client's address,
each checked strictly; a refusal is a status and a JSON body
``{"error": kind, "message": ...}`` (docs/protocol.md, "Server-Sent Events").
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import Request

from partysense.core import budgets
from partysense.core.channels import MAX_EVENT_ID
from partysense.core.errors import ClientError
from partysense.dialects.dialect import Shared
from partysense.dialects.subscription import parse_event_id
from partysense.dialects.tokens import Grant, TokenError, Tokens, bearer_token
from partysense.web.jsonanswer import write_json
from partysense.wire.origins import AllowedOrigins
from partysense.wire.querytoken import query_token

MAX_ID_DIGITS = 19    # Last-Event-ID: a seq, at most 2^63 - 1


class Refused(Exception):
    """An answer instead of a stream: a status, a kind and a message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def compact(body: Any) -> bytes:
    """JSON on one line (an SSE ``data:`` line may not break)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def answer(request: Request, refusal: Refused) -> None:
    """The refusal as a response; an EventSource does not retry these."""
    write_json(request, refusal.status, {"error": refusal.kind, "message": refusal.message},
               retry_after=5 if refusal.status in (429, 503) else None)


def allow_origin(request: Request, origins: AllowedOrigins) -> None:
    """CORS for pages on other origins (an overlay): any, or --allowed-origins only,
    matched as the WebSocket matches them (partysense/wire/origins.py: the port
    filled in, ``*`` for anything).

    Browsers send an EventSource's Last-Event-ID without a preflight; the
    response needs only Access-Control-Allow-Origin. No Origin: not a browser.
    """
    if not origins.allowed:
        request.setHeader("access-control-allow-origin", "*")
        return
    request.setHeader("vary", "origin")
    origin = request.getHeader("origin")
    if origin is None:
        return
    if origins.allows(origin):
        request.setHeader("access-control-allow-origin", origin)
        return
    raise Refused(403, "origin_not_allowed", f"Origin {origin[:100]} is not allowed")


def event_of(postpath: list[bytes]) -> int | None:
    if len(postpath) != 2 or postpath[1] != b"stream":
        raise Refused(404, "not_found", "the streams are /events/<id>/stream and "
                                        "/events/ALL/stream")
    try:
        return parse_event_id(postpath[0].decode("ascii"))
    except (UnicodeDecodeError, ClientError):
        raise Refused(400, "bad_event_id", f"the event must be a positive integer up to "
                                           f"{MAX_EVENT_ID} or ALL") from None


def wants_presence(request: Request) -> bool:
    """``?presence=1``: the stream also carries ``event: presence`` (the count
    of watchers), asked for so that consumers written before it see no new event."""
    return (request.args.get(b"presence") or [b""])[0] in (b"1", b"true")


def last_event_id(request: Request) -> int | None:
    """The seq to resume after: the Last-Event-ID header (a browser's newest),
    else ?last_event_id= (a new EventSource carrying an old stream's place)."""
    value: Any = request.getHeader("last-event-id")
    if not value:
        values = request.args.get(b"last_event_id") or [b""]
        value = values[0].decode("ascii", "replace")
    if not value:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_ID_DIGITS
            and int(value) <= MAX_EVENT_ID):
        raise Refused(400, "bad_last_event_id",
                      "Last-Event-ID must be the id of an event this stream sent (a seq)")
    return int(value)


def token_of(request: Request) -> str | None:
    """``Authorization: Bearer``, else ``?token=`` read by the rule that hides
    it in the access log (partysense/wire/querytoken.py)."""
    header = bearer_token(request.getHeader("authorization"))
    if header is not None:
        return header
    return query_token(request.uri)


def granted(request: Request, tokens: Tokens, now: float, event_id: int | None) -> Grant:
    """The grant of the request's token for ``event_id``; Refused (401, 403) if none.

    A token whose ``exp`` has passed is refused as ``token_expired``, one within
    the clock-skew leeway too (the stream would end as soon as it began), so
    that the client knows to come back with a fresh one.
    """
    try:
        grant = tokens.grant(token_of(request), now)
        if grant.expires <= now:
            raise TokenError("unauthorized", "the token has expired", expired=True)
        grant.check(event_id)
    except TokenError as error:
        if error.expired:
            raise Refused(401, "token_expired", error.reason) from None
        raise Refused(401 if error.kind == "unauthorized" else 403, error.kind,
                      error.reason) from None
    return grant


def client_address(request: Request, trusted_proxies: int) -> str:
    """The client's address; behind --trusted-proxies, X-Forwarded-For's as Autobahn reads it."""
    forwarded = request.getHeader("x-forwarded-for") if trusted_proxies else None
    if forwarded:
        return [a.strip() for a in forwarded.split(",")][-trusted_proxies:][0]
    peer: Any = request.getClientAddress()
    return str(getattr(peer, "host", peer))


def spend_budgets(shared: Shared, address: str, since: int | None) -> int:
    """A stream is a subscribe from the address's budget, and a resume a replay
    of at most so many rows (returned: settled when the stream ends); or Refused."""
    now = shared.clock.seconds()
    refusal = budgets.subscribe_refusal(shared.budgets, address, now)
    if refusal is not None:
        raise Refused(429, "too_many_subscribes", refusal)
    if since is None:
        return 0
    rows = shared.replay_rows(since)
    refusal = budgets.replay_refusal(shared.budgets, address, now, rows)
    if refusal is not None:
        raise Refused(429, "too_many_replays", refusal)
    return rows


def head_bytes(request: Request) -> int:
    """About how many bytes the request's head took (its line and headers)."""
    size = len(request.method) + len(request.uri) + len(request.clientproto) + 6
    for name, values in request.requestHeaders.getAllRawHeaders():
        size += sum(len(name) + len(value) + 4 for value in values)
    return size
