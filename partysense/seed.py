"""The seed dialect: what the old Node.js service spoke, byte for byte.

    -> {"event": 1}      (or "1", or "ALL" for every event)
    <- one change payload per vote change, exactly as the trigger built it
    -> {"event": 2}      moves the subscription

No acknowledgements: a bad request closes the connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from partysense import errors
from partysense.adapters.autobahn_adapter import Frame, prepare
from partysense.channels import channel_for
from partysense.dialect import Client, Shared
from partysense.errors import ClientError
from partysense.hub import Delivery
from partysense.pgservice import NotConnected
from partysense.subscription import parse_seed_request


def seed_frame(delivery: Delivery) -> Frame:
    # The trigger's JSON, byte for byte, as the seed service forwarded it.
    return prepare(delivery.change.payload)


class SeedSession:
    """One seed client's single subscription."""

    dialect = "seed"

    def __init__(self, client: Client, shared: Shared) -> None:
        self._client = client
        self._shared = shared
        self.channel: str | None = None

    @property
    def subscriptions(self) -> int:
        return 0 if self.channel is None else 1

    def deliver(self, delivery: Delivery) -> None:
        self._client.send_frame(delivery.frame("seed", seed_frame))

    @defer.inlineCallbacks
    def received(self, text: str) -> Any:
        """Check the request against the database, then (re)subscribe."""
        event_id = parse_seed_request(text)
        listener = self._shared.listener
        try:
            if not listener.connected:
                # Subscribed now, a client would silently miss what commits
                # before the listener is back: better to say "try later".
                raise NotConnected(listener.reason)
            if event_id is not None and not (yield self._shared.events.exists(event_id)):
                raise ClientError("unknown_event", errors.UNKNOWN_EVENT,
                                  f"event {event_id} does not exist")
        except NotConnected as error:
            raise ClientError("try_later", errors.TRY_AGAIN_LATER,
                              f"the database is unreachable ({error}); retry soon") from None
        if not self._client.is_live:
            return
        self.close()
        self.channel = channel_for(event_id)
        self._shared.hub.subscribe(self.channel, self)

    def close(self) -> None:
        if self.channel is not None:
            self._shared.hub.unsubscribe(self.channel, self)
            self.channel = None
