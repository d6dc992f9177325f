"""The seed dialect: what the old Node.js service spoke, byte for byte.

    -> {"event": 1}      (or "1", or "ALL" for every event)
    <- one change payload per vote change, exactly as the trigger built it
    -> {"event": 2}      moves the subscription

No acknowledgements: a bad request closes the connection.

A subscription carries only what commits after its request: the log's end
is read once the request is in, and changes up to it are not sent. Each
daemon reads the log at its own pace; without that floor a client that
reconnects (through a load balancer) to a daemon that has not yet read a
change the previous daemon already sent it would get that change twice.
The old service, which LISTENed once per client, never sent one twice.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet import defer

from partysense.adapters.autobahn_adapter import Frame, prepare
from partysense.core import budgets, errors
from partysense.core.channels import channel_for
from partysense.core.errors import ClientError
from partysense.core.hub import Delivery
from partysense.db.errors import NotConnected, Overloaded
from partysense.dialects.dialect import Client, Shared
from partysense.dialects.subscription import parse_seed_request
from partysense.dialects.tokens import Grant, TokenError


def seed_frame(delivery: Delivery) -> Frame:
    # The trigger's JSON, byte for byte, as the seed service forwarded it.
    return prepare(delivery.change.payload)


class SeedSession:
    """One seed client's single subscription."""

    dialect = "seed"
    wire_format = "seed"

    @staticmethod
    def encode(delivery: Delivery) -> Frame:
        """The frame of a change, made once for every subscriber (partysense/core/hub.py)."""
        return seed_frame(delivery)

    def __init__(self, client: Client, shared: Shared) -> None:
        self._client = client
        self._shared = shared
        self.channel: str | None = None
        self._floor = 0  # the log's end when the request came: older changes are not ours
        self._expiry: Any = None  # the timer that closes the client when its token expires

    @property
    def subscriptions(self) -> int:
        return 0 if self.channel is None else 1

    def deliver(self, delivery: Delivery, frame: Frame) -> None:
        if delivery.seq <= self._floor:
            return  # committed before the request: maybe sent by another daemon already
        self._client.send_frame(frame)

    @defer.inlineCallbacks
    def received(self, text: str) -> Any:
        """Check the request against the database, then (re)subscribe."""
        event_id, token = parse_seed_request(text)
        grant = self._authorize(event_id, token)
        address = self._client.address or "?"
        refusal = budgets.subscribe_refusal(self._shared.budgets, address,
                                            self._shared.clock.seconds())
        if refusal is not None:  # reconnecting does not start a new budget
            raise ClientError("too_many_subscribes", errors.FLOOD, refusal)
        listener = self._shared.listener
        try:
            # Held while the listener connects (within --grace): subscribed
            # while it is away for longer, a client would silently miss what
            # commits before it is back: better to say "try later".
            yield listener.whenAvailable()
            if event_id is not None and not (
                    yield self._shared.event_exists(address, event_id)):
                raise ClientError("unknown_event", errors.UNKNOWN_EVENT,
                                  f"event {event_id} does not exist")
            # Read after the request came (shared by the requests of a storm).
            floor = yield self._shared.reads.log_end()
        except Overloaded:
            raise ClientError("try_later", errors.TRY_AGAIN_LATER,
                              "the server is busy; retry soon") from None
        except NotConnected as error:
            raise ClientError("try_later", errors.TRY_AGAIN_LATER,
                              f"the database is unreachable ({error}); retry soon") from None
        if not self._client.is_live:
            return
        self.close()
        self._floor = floor
        self.channel = channel_for(event_id)
        self._shared.hub.subscribe(self.channel, self)
        if grant.expires != math.inf:
            clock = self._shared.clock
            self._expiry = clock.callLater(max(0.0, grant.expires - clock.seconds()),
                                           self._expired)

    def _authorize(self, event_id: int | None, token: Any) -> Grant:
        now = self._shared.clock.seconds()
        try:
            grant = self._shared.tokens.grant(token or self._client.url_token, now)
            if grant.expires <= now:
                # Within the clock-skew leeway, but a seed client cannot refresh
                # it: subscribed, it would be closed at once.
                raise TokenError("unauthorized", "the token has expired", expired=True)
            grant.check(event_id)
        except TokenError as error:
            code = errors.UNAUTHORIZED if error.kind == "unauthorized" else errors.FORBIDDEN
            raise ClientError(error.kind, code, error.reason) from None
        return grant

    def _expired(self) -> None:
        self._expiry = None
        self.close()
        self._client.close_with(errors.UNAUTHORIZED, "the token has expired")

    def close(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        if self.channel is not None:
            self._shared.hub.unsubscribe(self.channel, self)
            self.channel = None
