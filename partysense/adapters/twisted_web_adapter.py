"""twisted.web, as an SSE stream needs it: writing around ``Request``.

A stream's events are framed once per change for every stream
(partysense/web/sse.py); ``Request.write`` would copy and chunk-frame each
write again. So, once the response head is out, a stream writes its bytes
straight to the connection's transport, and tells the request what it wrote
when it ends, for the access log.

Names used that twisted.web does not document as API: ``Request.channel``'s
``transport`` and ``persistent``, ``Request.chunked`` and
``Request.sentLength``. Canaries: tests/test_adapters_twisted_web.py.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request


def raw_transport(request: Request) -> Any:
    """The transport of the connection ``request`` came on."""
    channel: Any = request.channel
    return channel.transport


def last_response(request: Request) -> None:
    """The connection closes once this response is over (no keep-alive)."""
    request.setHeader("connection", "close")
    channel: Any = request.channel
    channel.persistent = False


def is_chunked(request: Request) -> bool:
    """Whether Twisted frames the response body in HTTP/1.1 chunks (known once
    the head is written)."""
    return bool(request.chunked)


def written_around(request: Request, size: int) -> None:
    """``size`` body bytes went out around ``Request.write``: counted as sent
    (the access log reads ``sentLength``)."""
    request.sentLength += size
