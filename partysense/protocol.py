"""The WebSocket protocol every client speaks to, and its factory.

Wire protocol of a seed client (no subprotocol asked for), as the old
Node.js service spoke it:

    -> {"event": 1}          (or {"event": "1"}, or {"event": "ALL"})
    <- {"eid": 1, "event": "Party", "track": "...", "artist": "...",
        "tid": 7, "up": true, "op": "insert", "vote": 42, "prev": null,
        "seq": 1234, "truncated": false}            one per vote change
    -> {"event": 2}          moves the subscription to event 2

Bad input closes the connection with the codes in partysense/errors.py.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from partysense import errors
from partysense.errors import ClientError
from partysense.events import EventDirectory
from partysense.hub import Change, Hub
from partysense.listener import NotConnected
from partysense.subscription import channel_for, parse_seed_request


def encode_seed(change: Change) -> bytes:
    # The trigger's JSON, byte for byte, as the seed service forwarded it.
    return change.payload.encode("utf-8")


class LiveProtocol(WebSocketServerProtocol):
    """One browser or phone. Autobahn owns ``self.log``, so ours is ``_log``."""

    _log = Logger()
    factory: LiveFactory

    def __init__(self) -> None:
        super().__init__()
        self.channel: str | None = None
        self._queue: defer.Deferred[None] = defer.succeed(None)

    # -- Autobahn callbacks ---------------------------------------------------

    def onOpen(self) -> None:
        self.factory.clients.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.refuse(ClientError(
                "binary", errors.UNSUPPORTED_DATA, "binary frames are not accepted; send JSON text"
            ))
            return
        text = payload.decode("utf-8")  # Autobahn has checked it is UTF-8
        # One request at a time, in order: a second one moves the subscription
        # only after the first has been checked against the database.
        self._queue.addCallback(lambda _: self._configure(text))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.clients.discard(self)
        self._leave()

    # -- subscriptions --------------------------------------------------------

    @defer.inlineCallbacks
    def _configure(self, text: str) -> Any:
        if self.state != self.STATE_OPEN:
            return
        try:
            event_id = parse_seed_request(text)
            if event_id is not None and not (yield self.factory.events.exists(event_id)):
                raise ClientError("unknown_event", errors.UNKNOWN_EVENT,
                                  f"event {event_id} does not exist")
        except ClientError as error:
            self.refuse(error)
            return
        except NotConnected as error:
            self.refuse(ClientError("try_later", errors.TRY_AGAIN_LATER,
                                    f"the database is unreachable ({error}); retry soon"))
            return
        except Exception as error:
            self._log.error("Checking an event for {peer} failed: {error}",
                            peer=self.peer, error=error)
            self.refuse(ClientError("try_later", errors.TRY_AGAIN_LATER,
                                    "could not check the event; retry soon"))
            return
        if self.state != self.STATE_OPEN:
            return
        self._leave()
        self.channel = channel_for(event_id)
        self.factory.hub.subscribe(self.channel, self)

    def _leave(self) -> None:
        if self.channel is not None:
            self.factory.hub.unsubscribe(self.channel, self)
            self.channel = None

    def deliver(self, change: Change) -> None:
        if self.state == self.STATE_OPEN:
            self.sendPreparedMessage(change.frame("seed", encode_seed))

    def refuse(self, error: ClientError) -> None:
        """Close this client with the error's code and reason, logged once."""
        self._log.info(
            "Closing {peer} ({kind}, code {code}): {reason}",
            peer=self.peer, kind=error.kind, code=error.code, reason=error.reason,
        )
        self.factory.count_bad_input(error.kind)
        self._leave()
        self.close_with(error.code, error.reason)

    def close_with(self, code: int, reason: str) -> None:
        """Start the closing handshake with any code, protocol-level ones included.

        Autobahn's sendClose() only takes 1000 and 3000-4999; the standard
        codes we use (1001, 1003, 1007, 1008, 1013) go through the frame API.
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)


class LiveFactory(WebSocketServerFactory):
    protocol = LiveProtocol  # type: ignore[assignment]

    def __init__(self, hub: Hub, events: EventDirectory, *, max_message_bytes: int = 4096,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hub = hub
        self.events = events
        self.clients: set[LiveProtocol] = set()
        self.bad_inputs: dict[str, int] = {}
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message_bytes,
            maxFramePayloadSize=max_message_bytes,
            failByDrop=False,          # close with a code and reason, not a dropped socket
            perMessageCompressionAccept=None,  # prepared frames need it off
            autoPingInterval=30,
            autoPingTimeout=20,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=3,
        )

    def count_bad_input(self, kind: str) -> None:
        self.bad_inputs[kind] = self.bad_inputs.get(kind, 0) + 1



class ClientsService(Service):
    """Closes every client with 1001 when the daemon stops.

    Stopped before the web port and the listener (services stop in reverse
    order of start), and never waits longer than ``grace`` seconds: a client
    that does not answer its close frame is dropped.
    """

    def __init__(self, factory: LiveFactory, clock: Any, grace: float = 2.0) -> None:
        self._factory = factory
        self._clock = clock
        self._grace = grace

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        clients = list(self._factory.clients)
        for client in clients:
            client.close_with(errors.GOING_AWAY, "server shutting down")
        done: defer.Deferred[None] = defer.Deferred()

        def check(deadline: float) -> None:
            if not self._factory.clients or self._clock.seconds() >= deadline:
                for client in list(self._factory.clients):
                    client.dropConnection(abort=True)
                done.callback(None)
            else:
                self._clock.callLater(0.05, check, deadline)

        check(self._clock.seconds() + self._grace)
        return done
