"""Close codes and the one exception a session raises to close a client.

| code | kind          | when                                                     |
|------|---------------|----------------------------------------------------------|
| 1001 | going_away    | the daemon is shutting down                              |
| 1002 | protocol_error| a frame that breaks the WebSocket rules (RFC 6455)       |
| 1003 | binary        | a binary frame: the protocol is JSON text                |
| 1007 | not_json      | a text frame that is not JSON (or not UTF-8)             |
| 1008 | wrong_shape   | JSON, but not {"event": <id>} / {"event": "ALL"}         |
| 1008 | bad_event_id  | an event id that is not a positive 32-bit integer        |
| 1009 | too_big       | a message over the size limit                            |
| 1013 | try_later     | the database is unreachable, or the server is full       |
| 4004 | unknown_event | no such event in event_event                             |
| 4401 | unauthorized  | no token, or one that is invalid or expired (tokens on)  |
| 4403 | forbidden     | a valid token that does not name the event               |
| 4403 | origin_not_allowed | a browser page whose Origin --allowed-origins refuses |
| 4008 | too_slow      | the client stopped reading; its queue passed the limit   |
| 4029 | flood         | too many messages per second                             |
| 4029 | frame_flood   | too many frames (pings, fragments...) per second         |
| 4029 | too_many_fragments | a message in more than 16 frames                    |
"""

from __future__ import annotations

GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
INVALID_PAYLOAD = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
UNKNOWN_EVENT = 4004
UNAUTHORIZED = 4401
FORBIDDEN = 4403
TOO_SLOW = 4008
FLOOD = 4029


class ClientError(Exception):
    """Bad input from a client: close it with ``code`` and a readable ``reason``."""

    def __init__(self, kind: str, code: int, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.code = code
        self.reason = reason[:120]  # a close reason must fit in 123 bytes


def first_line(error: BaseException) -> str:
    """An error's first line, without libpq's severity prefix ("FATAL:  ...").

    What goes into a log line or a close reason: the rest (libpq's DETAIL,
    HINT, a traceback) says nothing more to a sysadmin.
    """
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    first = lines[0]
    for prefix in ("FATAL:", "ERROR:"):
        if first.startswith(prefix):
            first = first[len(prefix):].strip()
    return first


def is_utf8(text: str) -> bool:
    """JSON's "\\ud800" decodes to a lone surrogate, which has no UTF-8 to send on."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
