"""Every JSON answer of the HTTP resources, written one way.

``/api/events``, an event's pulse, ``/healthz``, a refused SSE stream, a
refused token and the status page's data all answer a status, a JSON body
on one line and the same headers: ``content-type: application/json``,
``cache-control: no-store`` (an answer is about now; no proxy may keep it)
and, when the client should come back later, ``retry-after``.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from twisted.web.server import Request


def json_body(request: Request, status: int, body: Any, retry_after: int | None = None) -> bytes:
    """Set a JSON answer's status and headers; its bytes, for the caller to write
    (or return from ``render_GET``)."""
    # Twisted knows no reason phrase for some statuses (429): the standard one.
    request.setResponseCode(status, HTTPStatus(status).phrase.encode("ascii"))
    request.setHeader("content-type", "application/json")
    request.setHeader("cache-control", "no-store")
    if retry_after is not None:
        request.setHeader("retry-after", str(retry_after))
    return json.dumps(body).encode("utf-8") + b"\n"


def write_json(request: Request, status: int, body: Any, retry_after: int | None = None) -> None:
    """Answer ``request`` with JSON, whole: status, headers, body, finish."""
    request.write(json_body(request, status, body, retry_after))
    request.finish()


class LaterAnswer:
    """The JSON answer of a request answered later (``NOT_DONE_YET``), written
    only if the client is still there to read it."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._gone = False
        request.notifyFinish().addErrback(self._went)

    def _went(self, _: Any) -> None:
        self._gone = True

    def __call__(self, status: int, body: Any, retry_after: int | None = None) -> None:
        if not self._gone:
            write_json(self._request, status, body, retry_after)
