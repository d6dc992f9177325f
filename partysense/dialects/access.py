"""A v2 connection's access: the grant of its token, and what happens when it expires.

The token comes from the URL (``ws://host/?token=...``), from an ``auth``
message, or with a ``subscribe``; the newest valid one is the connection's
grant. When it expires the client hears ``token_expired`` and has ``grace``
seconds from the token's ``exp`` to send a fresh ``auth``; its changes keep
flowing meanwhile, so it loses none. Past the grace its subscriptions end.

The grace lets what is subscribed go on; it buys nothing new. Once a token
of the connection has expired, a token whose ``exp`` has passed (the same
one again, or another) is refused: it neither adds a subscription nor
restarts the grace. Only a token presented on a connection that has seen
none expire may be accepted within the clock-skew leeway (tokens.LEEWAY)
after its ``exp``, once: it is told ``token_expired`` at once, and its grace
runs from that ``exp``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from partysense.dialects.tokens import Grant, TokenError, Tokens

GRACE = 30.0


class Access:
    """The grant a connection holds, and the timers of its expiry."""

    def __init__(self, tokens: Tokens, clock: IReactorTime, url_token: str | None,
                 expired: Callable[[], None], lapsed: Callable[[], None],
                 grace: float = GRACE) -> None:
        self._tokens = tokens
        self._clock = clock
        self._url_token = url_token
        self._expired = expired
        self._lapsed = lapsed
        self._grace = grace
        self._grant: Grant | None = None
        self._timer: Any = None
        # A token of this connection has expired: no expired token is taken again.
        self._seen_expiry = False

    def grant(self, token: Any = None) -> Grant:
        """The grant to use now: ``token``'s if given (it becomes the connection's),
        else the one held, else the URL's. TokenError when none is valid."""
        now = self._clock.seconds()
        if token is None and self._grant is not None and self._grant.expires > now:
            return self._grant
        grant = self._tokens.grant(token if token is not None else self._url_token, now)
        if grant.expires <= now and self._seen_expiry:
            raise TokenError("unauthorized", "the token has expired", expired=True)
        self._hold(grant)
        return grant

    def close(self) -> None:
        self._cancel()

    def _hold(self, grant: Grant) -> None:
        self._cancel()
        self._grant = grant
        if grant.expires == math.inf:
            return
        if grant.expires <= self._clock.seconds():
            self._seen_expiry = True  # taken within the leeway, this once
        delay = max(0.0, grant.expires - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        assert self._grant is not None
        self._seen_expiry = True
        # From the token's exp, not from now: a token taken within the leeway
        # gets no more grace than one that expired while held.
        delay = max(0.0, self._grant.expires + self._grace - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._lapse)
        self._expired()

    def _lapse(self) -> None:
        self._timer = None
        self._lapsed()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
