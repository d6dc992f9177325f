"""The access log: one line per HTTP request and per WebSocket or SSE connection,
tokens hidden, at a bounded rate per address.

Every line here is one a client causes, so each goes through a per-address
budget (:class:`partysense.core.quietlog.PerAddress`): ``BURST`` lines per
address every ``INTERVAL`` seconds, then a summary line per address with
what was dropped, counted by kind (the HTTP status, or ``websocket`` /
``sse``). Before, 16 s of requests for the pulse wrote 13 MB.

The request lines keep twisted.web's combined format; a token in the URL or
in a ``Referer`` is written ``***`` (partysense/wire/querytoken.py: the same rule
that reads it). A WebSocket or an SSE stream leaves one line when it ends::

    websocket "203.0.113.7" "GET /?token=***" ended after 81.204 s: sent 5120 bytes,
        received 212 bytes, close 1000 "bye"

The lines are ``twisted.logger`` events in the ``partysense.access``
namespace, with their fields (``peer``, ``path``, ``duration``, ...) for
the JSON logs (partysense/process/logs.py); docs/operations.md says where they go.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter

from partysense.core.quietlog import PerAddress
from partysense.wire.querytoken import redact_uri

BURST = 30        # lines per address per interval: a page load is about eight
INTERVAL = 10.0


class _Redacted:
    """What twisted.web's combined formatter reads of a request, tokens hidden
    in the URL and in the headers it logs (Referer, User-Agent)."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self.uri = redact_uri(request.uri)
        self.method = request.method
        self.clientproto = request.clientproto
        self.code = request.code
        self.sentLength = request.sentLength

    def getClientAddress(self) -> Any:
        return self._request.getClientAddress()

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        return None if value is None else redact_uri(value)


def combined_line(timestamp: str, request: Any) -> str:
    """The combined-format access log line of ``request``, with no token in it."""
    return str(combinedLogFormatter(timestamp, _Redacted(request)))


def printable(path: bytes) -> str:
    """A request target as it may be logged: tokens hidden, at most 200 characters."""
    return redact_uri(path)[:200].decode("ascii", "backslashreplace")


def escaped(text: str | bytes | None) -> str:
    """A client's text (a close reason) on one line, its quotes escaped."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return json.dumps((text or "")[:200], ensure_ascii=False)[1:-1]


class AccessLog:
    """The access log of one port, bounded per address."""

    def __init__(self, clock: IReactorTime, burst: int = BURST, interval: float = INTERVAL,
                 log: Logger | None = None) -> None:
        self._log = log or Logger(namespace="partysense.access")
        self.limit = PerAddress(self._log, clock, burst, interval, what="access log lines")

    def request(self, address: str, code: int, line: str) -> None:
        """An HTTP request's line (``combined_line``)."""
        if self.limit.allow(address, str(code)):
            self._log.info("{line}", line=line, peer=address, code=code)

    def connection_ended(self, kind: str, address: str, path: bytes, duration: float,
                         sent: int, received: int, code: int | None,
                         reason: str | bytes | None) -> None:
        """A WebSocket's or an SSE stream's line, when it ends."""
        if not self.limit.allow(address, kind):
            return
        self._log.info(
            '{kind} "{peer}" "GET {path}" ended after {duration:.3f} s: sent {bytes_sent} '
            'bytes, received {bytes_received} bytes, close {close_code} "{close_reason}"',
            kind=kind, peer=address, path=printable(path), duration=duration,
            bytes_sent=sent, bytes_received=received,
            close_code="-" if code is None else code, close_reason=escaped(reason))

    def stop(self) -> None:
        self.limit.stop()
