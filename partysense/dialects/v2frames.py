"""The bytes the ``partysense.v2`` dialect sends for a change or a presence count.

A change message is ``{"type": "change", "sub": <event or "ALL">, **change.fields()}``,
its JSON made once per change (``Delivery.frame("json", ...)``) and shared by
the v2 frame and the SSE event (partysense/web/sseframes.py); a presence
message is the notice's own JSON (partysense/core/notice.py), framed once for
every v2 subscriber. The session that sends them is partysense/dialects/v2.py.
"""

from __future__ import annotations

import json

from partysense.adapters.autobahn_adapter import Frame, prepare
from partysense.core.change import Change
from partysense.core.channels import channel_event
from partysense.core.hub import Delivery
from partysense.core.notice import Notice


def change_json(channel: str, change: Change) -> bytes:
    """A change message's JSON: "type" and "sub" (the subscription's event), then
    the change. One line always (JSON escapes control characters): the SSE
    stream (partysense/web/sse.py) sends the same bytes as its ``data:``."""
    event_id = channel_event(channel)
    body = {"type": "change", "sub": "ALL" if event_id is None else event_id, **change.fields()}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def change_frame(channel: str, change: Change) -> Frame:
    """A change message, framed."""
    return prepare(change_json(channel, change))


def delivery_json(delivery: Delivery) -> bytes:
    """A change's JSON, made once per change for the v2 frame and the SSE event
    alike (``Delivery.frame("json", ...)``): the same bytes, encoded once."""
    return delivery.frame("json", _json_of)


def _json_of(delivery: Delivery) -> bytes:
    return change_json(delivery.channel, delivery.change)


def v2_frame(delivery: Delivery) -> Frame:
    return prepare(delivery_json(delivery))


def notice_frame(notice: Notice) -> Frame:
    """A presence message, framed."""
    return prepare(notice.json)
