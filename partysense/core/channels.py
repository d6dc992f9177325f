"""Channel names: ``event_<id>`` for one event, ``firehose`` for every event.

The triggers (sql/install.sql) notify on both. A channel name is only ever
built from a validated integer here: the seed service's ``"LISTEN " +
channel`` with a client's string was an SQL injection.
"""

from __future__ import annotations

FIREHOSE = "firehose"
EVENT_PREFIX = "event_"
MAX_EVENT_ID = 2**63 - 1  # event_event.id: integer, or bigint with Django's BigAutoField


def event_channel(event_id: int) -> str:
    """The channel of one event."""
    if type(event_id) is not int or not 1 <= event_id <= MAX_EVENT_ID:
        raise ValueError(f"event id must be a positive 64-bit integer, not {event_id!r}")
    return f"{EVENT_PREFIX}{event_id}"


def channel_for(event_id: int | None) -> str:
    """The channel of an event, or the firehose for None (every event)."""
    return FIREHOSE if event_id is None else event_channel(event_id)


def channel_event(channel: str) -> int | None:
    """The event id of an ``event_<id>`` channel; None for the firehose.

    Raises ValueError for a name that is neither.
    """
    if channel == FIREHOSE:
        return None
    digits = channel[len(EVENT_PREFIX):]
    if not channel.startswith(EVENT_PREFIX) or not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"not a partysense channel: {channel!r}")
    event_id = int(digits)
    if event_channel(event_id) != channel:  # leading zeros, out of range
        raise ValueError(f"not a partysense channel: {channel!r}")
    return event_id


def carries(channel: str, event_id: int) -> bool:
    """Whether a change of ``event_id`` belongs on ``channel``."""
    return channel == FIREHOSE or channel == f"{EVENT_PREFIX}{event_id}"
