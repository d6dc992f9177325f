"""The seed dialect: what the old Node.js service spoke, byte for byte.

    -> {"event": 1}      (or "1", or "ALL" for every event)
    <- one change payload per vote change, exactly as the trigger built it
    -> {"event": 2}      moves the subscription

No acknowledgements: a bad request closes the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from partysense import errors
from partysense.errors import ClientError
from partysense.hub import Change
from partysense.listener import NotConnected
from partysense.subscription import channel_for, parse_seed_request

if TYPE_CHECKING:
    from partysense.protocol import LiveProtocol


def encode_seed(change: Change) -> bytes:
    # The trigger's JSON, byte for byte, as the seed service forwarded it.
    return change.payload.encode("utf-8")


class SeedSession:
    """One seed client's single subscription."""

    dialect = "seed"

    def __init__(self, protocol: LiveProtocol) -> None:
        self._protocol = protocol
        self._hub = protocol.factory.hub
        self.channel: str | None = None

    @property
    def subscriptions(self) -> int:
        return 0 if self.channel is None else 1

    def deliver(self, change: Change) -> None:
        self._protocol.send_prepared(change.frame("seed", encode_seed))

    @defer.inlineCallbacks
    def received(self, text: str) -> Any:
        """Check the request against the database, then (re)subscribe."""
        try:
            event_id = parse_seed_request(text)
            if not self._protocol.factory.listener.connected:
                # Subscribed now, a client would silently miss what commits
                # before the listener is back: better to say "try later".
                raise NotConnected(self._protocol.factory.listener.reason)
            if event_id is not None and not (yield self._protocol.factory.events.exists(event_id)):
                raise ClientError("unknown_event", errors.UNKNOWN_EVENT,
                                  f"event {event_id} does not exist")
        except NotConnected as error:
            raise ClientError("try_later", errors.TRY_AGAIN_LATER,
                              f"the database is unreachable ({error}); retry soon") from None
        if not self._protocol.is_live:
            return
        self.close()
        self.channel = channel_for(event_id)
        self._hub.subscribe(self.channel, self)

    def close(self) -> None:
        if self.channel is not None:
            self._hub.unsubscribe(self.channel, self)
            self.channel = None
