"""Who may watch an event's live board, and the token that lets them.

The token is the one ``partysense-db token`` prints (``partysense.dialects.tokens.mint``):
HS256, ``{"events": [id], "iat", "exp"}`` and ``aud`` when the settings name one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from partysense.dialects.tokens import mint
from partysense.djangoapp.conf import LiveSettings, live_settings


@dataclass(frozen=True)
class Refusal:
    """Why a guest may not watch: an HTTP status and the daemon's error kinds."""

    status: int     # 401: not logged in; 403: logged in, but not this event
    error: str      # "unauthorized" or "forbidden"
    message: str


NOT_LOGGED_IN = Refusal(401, "unauthorized", "log in to watch this event live")
NOT_ALLOWED = Refusal(403, "forbidden", "you may not watch this event")


def refusal(request: Any, event_id: int, config: LiveSettings | None = None) -> Refusal | None:
    """None if ``request``'s user may watch ``event_id``: logged in (unless the
    settings allow anonymous guests) and allowed by ``MAY_WATCH``, if set."""
    config = config or live_settings()
    user = getattr(request, "user", None)
    if not config.allow_anonymous and not (user is not None and user.is_authenticated):
        return NOT_LOGGED_IN
    if config.may_watch is not None and not config.may_watch(request, event_id):
        return NOT_ALLOWED
    return None


def live_token(event_id: int, config: LiveSettings | None = None,
               now: float | None = None) -> str | None:
    """A token for one event, valid ``TOKEN_TTL`` seconds; None when the settings
    have no secret (a daemon without tokens). Check :func:`refusal` first."""
    config = config or live_settings()
    if config.secret is None:
        return None
    return mint(config.secret, [event_id], config.ttl, time.time() if now is None else now,
                audience=config.audience)
