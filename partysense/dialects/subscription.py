"""Reading a client's subscription request, strictly.

The event id comes out as a validated integer (or None for every event);
only partysense/core/channels.py turns it into a channel name.
"""

from __future__ import annotations

import json
from typing import Any

from partysense.core.channels import MAX_EVENT_ID
from partysense.core.errors import INVALID_PAYLOAD, POLICY_VIOLATION, ClientError

ALL_EVENTS = "ALL"


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ClientError("not_json", INVALID_PAYLOAD, "message is not valid JSON") from None
    except RecursionError:
        # "[[[[...]]]]" fits in 4096 bytes and is deeper than Python recurses.
        raise ClientError("not_json", INVALID_PAYLOAD, "message is nested too deeply") from None


def parse_event_id(value: Any) -> int | None:
    """The event id in ``value``, or None for "ALL" (the firehose)."""
    if value == ALL_EVENTS:
        return None
    if type(value) is int:
        event_id = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        event_id = int(value)
    else:
        raise ClientError(
            "bad_event_id", POLICY_VIOLATION,
            f'"event" must be a positive integer or "ALL", not {_short(value)}',
        )
    if not 1 <= event_id <= MAX_EVENT_ID:
        raise ClientError(
            "bad_event_id", POLICY_VIOLATION,
            f'"event" must be between 1 and {MAX_EVENT_ID}, not {event_id}',
        )
    return event_id


def parse_seed_request(text: str) -> tuple[int | None, Any]:
    """A seed client's {"event": <id>} or {"event": "ALL"}, with an optional
    "token": the event id (None for every event) and the token."""
    message = parse_json(text)
    if not isinstance(message, dict) or "event" not in message:
        raise ClientError(
            "wrong_shape", POLICY_VIOLATION,
            'expected {"event": <event id>} or {"event": "ALL"}',
        )
    return parse_event_id(message["event"]), message.get("token")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
