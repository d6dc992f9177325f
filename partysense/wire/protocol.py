"""The WebSocket protocol every client connects with, and its factory.

The protocol is the plumbing shared by every dialect: limits (clients,
message size and rate, Origins), the outbox that keeps a slow client from
holding up others or growing our memory (partysense/wire/outbox.py), logging,
and closing with a clear code. What the messages mean is the session's
business; the factory is handed a table of dialects, subprotocol to session
maker (None: a client that asks for none), by the service assembly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from partysense.adapters.autobahn_adapter import (
    Frame,
    ServerFactory,
    ServerProtocol,
    log_as_autobahn,
    prepare,
)
from partysense.core import errors
from partysense.core.addresses import network_of
from partysense.core.errors import ClientError
from partysense.core.quietlog import PerAddress
from partysense.dialects.dialect import ClientCounters, MakeSession, Session
from partysense.wire.clients import ClientRegistry, Limits
from partysense.wire.frames import FRAMES_PER_MESSAGE, FloodedAddresses, FrameBudget
from partysense.wire.outbox import Outbox
from partysense.wire.querytoken import query_token
from partysense.wire.sink import Sink

# Autobahn's lines about bad connections, per address every 10 s: one bad
# handshake's two ("failing ... handshake", "dropping connection"), and one more.
AUTOBAHN_BURST = 3


def address_of(peer: str | None) -> str:
    """The client's address without its port ("tcp4:1.2.3.4:5678" -> "1.2.3.4").

    Behind --trusted-proxies Autobahn has already replaced the peer with the
    address from X-Forwarded-For.
    """
    peer = peer or "?"
    if peer.startswith(("tcp4:", "tcp6:")):
        return peer[5:].rsplit(":", 1)[0]
    return peer


# The close codes Autobahn fails a connection with, as kinds of bad input.
AUTOBAHN_KINDS = {errors.PROTOCOL_ERROR: "protocol_error", errors.INVALID_PAYLOAD: "not_json",
                  errors.MESSAGE_TOO_BIG: "too_big"}


class LiveProtocol(ServerProtocol):
    """One browser or phone. Autobahn owns ``self.log``, so ours is ``_log``."""

    _log = Logger()
    factory: LiveFactory

    def __init__(self) -> None:
        super().__init__()
        self.session: Session | None = None
        self.sink: Sink | None = None  # from onOpen: the outbox, the writer, the bytes
        self.outbox: Outbox | None = None
        self.address: str | None = None  # counted in factory.per_address while open
        self.url_token: str | None = None
        # Why this client is closed as soon as it is open (its page's Origin).
        self.refusal: ClientError | None = None
        self._queue: defer.Deferred[None] = defer.succeed(None)
        self._pending = 0
        self._tokens = 0.0
        self._refilled = 0.0
        self._frames: FrameBudget | None = None  # from onConnect, before any frame
        self._held: Any = None  # the call that starts reading a held client
        self._connected_at = 0.0

    @property
    def is_live(self) -> bool:
        return bool(self.state == self.STATE_OPEN)

    @property
    def dialect(self) -> str | None:
        """Its session's dialect (None: refused before it had one)."""
        return None if self.session is None else self.session.dialect

    def abort(self) -> None:
        self.dropConnection(abort=True)

    # -- Autobahn callbacks ---------------------------------------------------

    def connectionMade(self) -> None:
        self._connected_at = self.factory.clock.seconds()
        super().connectionMade()

    def onConnect(self, request: Any) -> str | None:
        self._frames = FrameBudget(
            self.factory.clock, FRAMES_PER_MESSAGE * self.factory.limits.messages_per_second)
        # ws://host/?token=... for clients that can only set the URL; read by
        # the rule that hides it in the access log (partysense/wire/querytoken.py).
        self.url_token = query_token(self.request_target)
        self.refusal = self.factory.origin_refusal(request.origin)
        dialects = self.factory.dialects
        for subprotocol in request.protocols:
            if subprotocol in dialects:
                # The subprotocol is agreed even when refused: a browser fails a
                # handshake that does not echo it, and the page could not read why.
                if self.refusal is None:
                    self.session = dialects[subprotocol](self)
                return str(subprotocol)
        if self.refusal is None:
            self.session = dialects[None](self)
        return None

    def onOpen(self) -> None:
        if self.refusal is not None:
            # Open only to say why, then closed: never counted, no session.
            self.refuse(self.refusal)
            return
        limits = self.factory.limits
        self.sink = Sink(self.transport, self.factory.writer, limits.max_queue_bytes,
                         lambda: self.is_live, self.too_slow, self.queued_behind_autobahn)
        self.outbox = self.sink.outbox
        address = address_of(self.peer)
        refused = self.factory.admission(address)
        if refused is not None:
            self.refuse(refused)
            return
        self.address = address
        self.factory.enter(self, address)
        self._tokens = 2 * limits.messages_per_second
        self._refilled = self.factory.clock.seconds()
        # Behind twisted.web the HTTP channel is the socket's producer; the
        # WebSocket has taken the socket over, so the outbox replaces it.
        transport: Any = self.transport
        transport.unregisterProducer()
        transport.registerProducer(self.outbox, True)
        hold = self.factory.flooded.hold_for(address)
        if hold:
            # Its address flooded lately: a reconnecting flooder waits, not us.
            transport.pauseProducing()
            self._held = self.factory.clock.callLater(hold, self._release)

    def _release(self) -> None:
        self._held = None
        if self.state == self.STATE_OPEN and not self.reading_stopped:
            transport: Any = self.transport
            transport.resumeProducing()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self.is_live or self.session is None:
            return
        if not self._take_token():
            self.refuse(ClientError(
                "flood", errors.FLOOD,
                f"more than {self.factory.limits.messages_per_second:g} messages a second"))
            return
        if isBinary:
            self.refuse(ClientError(
                "binary", errors.UNSUPPORTED_DATA, "binary frames are not accepted; send JSON text"
            ))
            return
        if self._pending >= self.factory.limits.max_pending_requests:
            # Each waits for the database: queued without end they would grow
            # our memory at the client's pace, not the database's.
            self.refuse(ClientError(
                "flood", errors.FLOOD,
                f"more than {self.factory.limits.max_pending_requests} requests waiting"))
            return
        text = payload.decode("utf-8")  # Autobahn has checked it is UTF-8
        # One request at a time, in order: a second seed request moves the
        # subscription only after the first has been checked.
        self._pending += 1
        self._queue.addCallback(lambda _: self._handle(text))

    def frame_begins(self, opcode: int) -> None:
        # Every frame, pings and fragments too: the hot path, kept to a call
        # and a comparison (partysense/wire/frames.py).
        if self._frames is None:
            return
        refusal = self._frames.refusal(opcode)
        if refusal is not None and self.state == self.STATE_OPEN:
            self.refuse(refusal)
            # The rest of the flood (megabytes already in the socket buffers)
            # would cost as much to parse as it did before it was refused.
            self.stop_reading()
            self.factory.flooded.flooded(address_of(self.peer))

    def onPing(self, payload: bytes) -> None:
        # A client that pings but does not read would have us queue its pongs
        # without limit (the frame budget bounds how many it sends, not how
        # many it reads). One whose socket is full gets no answer until it
        # reads again.
        if self.outbox is None or not self.outbox.paused:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._held is not None:
            self._held.cancel()
            self._held = None
        self.factory.leave(self, self.address)
        self.address = None
        # /metrics adds this to what the open clients have been sent so far.
        self.factory.counters.closed_client_bytes += self.bytes_sent
        if self.outbox is not None:
            self.outbox.close()
        if self.session is not None:
            self.session.close()
        self._log_access(code, reason)

    def _log_access(self, code: int | None, reason: str | None) -> None:
        """The connection's one access log line (partysense/wire/accesslog.py)."""
        code, reason = self.close_said(code, reason)
        sent, received = self.wire_bytes
        self.factory.access_log.connection_ended(
            "websocket", address_of(self.peer), self.request_target,
            self.factory.clock.seconds() - self._connected_at, sent, received, code, reason)

    def autobahn_logged(self, level: str, format: str, fields: dict[str, Any]) -> None:
        # Autobahn's lines about a bad client, bounded per address as ours are.
        if self.factory.autobahn_limit.allow(address_of(self.peer), level):
            log_as_autobahn(level, format, fields)

    # -- requests -------------------------------------------------------------

    def _handle(self, text: str) -> defer.Deferred[None]:
        if not self.is_live or self.session is None:
            self._pending -= 1
            return defer.succeed(None)
        d = defer.maybeDeferred(self.session.received, text)
        d.addErrback(self._request_failed)
        return d.addBoth(self._answered)

    def _answered(self, result: Any) -> Any:
        self._pending -= 1
        return result

    def _request_failed(self, failure: Any) -> None:
        if failure.check(ClientError):
            self.refuse(failure.value)
            return
        self._log.failure("Request from {peer} failed", failure, peer=self.peer)
        self.refuse(ClientError("internal", errors.TRY_AGAIN_LATER,
                                "internal error handling the request; retry soon"))

    def _take_token(self) -> bool:
        rate = self.factory.limits.messages_per_second
        now = self.factory.clock.seconds()
        self._tokens = min(2 * rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    # -- sending (the Client interface of partysense/dialects/dialect.py) ---------------

    def send_frame(self, frame: Frame) -> None:
        """Send a prepared frame now, or queue it while the socket is full."""
        if self.state == self.STATE_OPEN and self.outbox is not None:
            self.outbox.send(frame)

    def send_json(self, body: dict[str, Any]) -> None:
        self.send_frame(prepare(json.dumps(body, ensure_ascii=False).encode("utf-8")))

    def stream(self, frames: Iterable[Frame]) -> defer.Deferred[None]:
        """Send many frames (a replay) only as fast as the client reads them."""
        if self.outbox is None:
            return defer.succeed(None)
        return self.outbox.stream(frames)

    def bytes_around_autobahn(self) -> int:
        return 0 if self.sink is None else self.sink.bytes_sent

    def before_autobahn_writes(self) -> None:
        # Our frames of this turn go first, or a change could follow the
        # close frame (a protocol error): partysense/wire/sink.py.
        if self.sink is not None:
            self.sink.flush()

    def too_slow(self) -> None:
        """Close a client that does not read what it is sent (code 4008)."""
        if self.state != self.STATE_OPEN:
            return
        if self.outbox is not None:
            self.outbox.discard()
        self.factory.counters.slow_closed += 1
        self.refuse(ClientError(
            "too_slow", errors.TOO_SLOW,
            f"not reading: over {self.factory.limits.max_queue_bytes} bytes queued"))
        # It is not reading, so it will not answer the close frame either.
        self.dropConnection(abort=True)

    # -- closing --------------------------------------------------------------

    def refuse(self, error: ClientError) -> None:
        """Close this client with the error's code and reason, logged once
        (at most one line per address every 10 s: partysense/core/quietlog.py)."""
        self.factory.quiet.info(
            network_of(address_of(self.peer)), "Closing {peer} ({kind}, code {code}): {reason}",
            peer=self.peer, kind=error.kind, code=error.code, reason=error.reason,
        )
        self.factory.counters.bad_input(error.kind)
        if self.session is not None:
            self.session.close()
        self.close_with(error.code, error.reason)

    def log_refused(self, kind: str, message: str) -> None:
        """A request refused with an error message (the connection stays)."""
        self.factory.quiet.info(
            network_of(address_of(self.peer)), "Refused a request from {peer} ({kind}): {message}",
            peer=self.peer, kind=kind, message=message)

    def refused_by_autobahn(self, code: int, reason: str) -> None:
        """Refused like any other bad input: logged once in our words, counted by kind."""
        self.refuse(ClientError(AUTOBAHN_KINDS.get(code, "protocol_error"), code, reason))

    def close_with(self, code: int, reason: str) -> None:
        """Start the closing handshake with any code, protocol-level ones included.

        Autobahn's sendClose() only takes 1000 and 3000-4999; the standard
        codes we use (1001, 1003, 1007, 1008, 1013) go through the frame API.
        """
        if self.state == self.STATE_OPEN:
            # At most 123 bytes, cut at a character boundary: a reason that is
            # not UTF-8 makes browsers fail the connection instead.
            reason_utf8 = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
            self.start_closing_handshake(code, reason_utf8)


class LiveFactory(ServerFactory):
    protocol = LiveProtocol  # type: ignore[assignment]

    def __init__(self, dialects: Mapping[str | None, MakeSession], clock: Any,
                 limits: Limits | None = None, counters: ClientCounters | None = None,
                 registry: ClientRegistry | None = None, **kwargs: Any) -> None:
        # The clients of the port, SSE streams included (partysense/wire/clients.py).
        if registry is None:
            registry = ClientRegistry(clock, limits, counters)
        self.registry = registry
        self.limits = registry.limits
        # Autobahn lets every Origin through ("null" too: the seed's example
        # page opened from a file sends it); we check them (origin_refusal),
        # so that a refused page hears why instead of a failed handshake.
        self.allow_null_origin = True
        self.origins = registry.origins
        super().__init__(**kwargs)
        self.dialects = dialects
        self.clock = clock
        self.writer = registry.writer
        self.counters = registry.counters
        self.clients = registry.clients
        self.per_address = registry.per_address
        self.admission = registry.admission
        self.connected_from = registry.connected_from
        self.enter = registry.enter
        self.leave = registry.leave
        self.clients_by_dialect = registry.clients_by_dialect
        self.quiet = registry.quiet
        self.access_log = registry.access_log
        self.flooded = FloodedAddresses(clock)  # addresses whose new clients wait
        # Autobahn's own lines about bad clients, bounded per address as ours are.
        self.autobahn_limit = PerAddress(Logger(namespace="autobahn"), clock, AUTOBAHN_BURST,
                                         what="Autobahn lines")
        self.setProtocolOptions(
            maxMessagePayloadSize=self.limits.max_message_bytes,
            maxFramePayloadSize=self.limits.max_message_bytes,
            failByDrop=False,          # close with a code and reason, not a dropped socket
            perMessageCompressionAccept=None,  # prepared frames need it off
            autoPingInterval=self.limits.ping_interval,
            autoPingTimeout=self.limits.ping_interval,
            # No timer per connection: Autobahn is handed a whole request by
            # the HTTP side (which has its own deadline, partysense/web/httpguard.py)
            # and answers it at once, so its opening handshake never waits.
            openHandshakeTimeout=0,
            closeHandshakeTimeout=3,
            allowedOrigins=["*"],
            trustXForwardedFor=registry.trusted_proxies,
        )

    def origin_refusal(self, origin: str | None) -> ClientError | None:
        """Why a browser page of ``origin`` may not connect (--allowed-origins),
        or None if it may. Closed at once with 4403 and the reason, like any
        refusal: logged once per address at most every 10 s, counted by kind."""
        if self.origins.allows(origin):
            return None
        return ClientError("origin_not_allowed", errors.FORBIDDEN,
                           f"origin_not_allowed: pages of {origin!s:.80} may not connect here")

    def stop_logs(self) -> None:
        """Log what the per-address limits held back, now (at shutdown)."""
        self.autobahn_limit.stop()
        self.access_log.stop()
