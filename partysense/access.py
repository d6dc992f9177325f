"""A v2 connection's access: the grant of its token, and what happens when it expires.

The token comes from the URL (``ws://host/?token=...``), from an ``auth``
message, or with a ``subscribe``; the newest valid one is the connection's
grant. When it expires the client hears ``token_expired`` and has ``grace``
seconds to send a fresh ``auth``; its changes keep flowing meanwhile, so it
loses none. Past the grace its subscriptions end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from partysense.tokens import Grant, Tokens

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

    def grant(self, token: Any = None) -> Grant:
        """The grant to use now: ``token``'s if given (it becomes the connection's),
        else the one held, else the URL's. TokenError when none is valid."""
        if token is None and self._grant is not None and \
                self._grant.expires > self._clock.seconds():
            return self._grant
        grant = self._tokens.grant(token if token is not None else self._url_token,
                                   self._clock.seconds())
        self._hold(grant)
        return grant

    def close(self) -> None:
        self._cancel()

    def _hold(self, grant: Grant) -> None:
        self._cancel()
        self._grant = grant
        if grant.expires != math.inf:
            delay = max(0.0, grant.expires - self._clock.seconds())
            self._timer = self._clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._timer = self._clock.callLater(self._grace, self._lapse)
        self._expired()

    def _lapse(self) -> None:
        self._timer = None
        self._lapsed()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
