"""A message about an event that is not a change: how many watch it (presence).

Sent to every subscriber of the event's channel through the hub
(``Hub.notify``), encoded at most once per wire format, like a change
(``hub.Delivery``): the JSON once, then one frame per format (a v2 text frame,
an SSE event, an SSE event as an HTTP/1.1 chunk). A count, never who.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class Notice:
    """``{"type": "presence", "event": N, "watchers": K}``, encoded once per wire format."""

    __slots__ = ("event_id", "watchers", "_json", "_frames")

    def __init__(self, event_id: int, watchers: int) -> None:
        self.event_id = event_id
        self.watchers = watchers
        self._json: bytes | None = None
        self._frames: dict[str, Any] = {}

    @property
    def json(self) -> bytes:
        """The message, one line (the SSE stream's ``data:`` too)."""
        if self._json is None:
            body = {"type": "presence", "event": self.event_id, "watchers": self.watchers}
            self._json = json.dumps(body, separators=(",", ":")).encode("ascii")
        return self._json

    def frame(self, wire_format: str, encode: Callable[[Notice], Any]) -> Any:
        """The frame for ``wire_format``, encoding it on first use."""
        frame = self._frames.get(wire_format)
        if frame is None:
            frame = self._frames[wire_format] = encode(self)
        return frame

    def __repr__(self) -> str:
        return f"Notice(event={self.event_id}, watchers={self.watchers})"
