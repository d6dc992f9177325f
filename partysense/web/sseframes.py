"""The bytes of a Server-Sent Events stream (docs/protocol.md, "Server-Sent Events").

A change is one event whose ``data`` is the v2 dialect's change message, the
very bytes of the v2 frame's payload, encoded once per change for both
(``v2frames.delivery_json``). To an HTTP/1.1 client the response is chunked; a
stream writes around twisted.web's Request, so it frames its chunks itself,
once per change for every stream of that framing (``Delivery.frame``).
"""

from __future__ import annotations

from partysense.core.hub import Delivery
from partysense.core.notice import Notice
from partysense.dialects.v2frames import delivery_json


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (RFC 9112 7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def event_bytes(seq: int, data: bytes) -> bytes:
    return b"id: %d\nevent: change\ndata: %s\n\n" % (seq, data)


def sse_frame(delivery: Delivery) -> bytes:
    return event_bytes(delivery.seq, delivery_json(delivery))


def sse_chunked_frame(delivery: Delivery) -> bytes:
    return chunk(delivery.frame("sse", sse_frame))


def presence_bytes(notice: Notice) -> bytes:
    """``event: presence``, no ``id:``: a count is not a place to resume from."""
    return b"event: presence\ndata: %s\n\n" % notice.json


KEEPALIVE_LINE = b": keepalive\n\n"
TOKEN_EXPIRED = b'event: token_expired\ndata: {"type":"token_expired"}\n\n'


def plain(data: bytes) -> bytes:
    """``data`` as it is (a response that is not chunked: HTTP/1.0)."""
    return data
