"""The WebSocket protocol every client connects with, and its factory.

The protocol is the plumbing shared by both dialects: limits (clients,
message size and rate, Origins), the bounded send queue that keeps a slow
client from holding up others or growing our memory, logging, and closing
with a clear code. What the messages mean is the session's business:
``partysense.seed`` (no subprotocol) or ``partysense.v2``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from partysense import errors
from partysense.errors import ClientError
from partysense.events import EventDirectory
from partysense.fastwrite import TurnWriter, write_now
from partysense.hub import Hub
from partysense.listener import ListenerService
from partysense.seed import SeedSession
from partysense.v2 import SUBPROTOCOL, V2Session


@dataclass
class Limits:
    """What one client may do; the defaults suit a party of thousands of phones."""

    max_clients: int = 100_000
    max_subscriptions: int = 32
    max_message_bytes: int = 4096
    messages_per_second: float = 20.0
    max_queue_bytes: int = 1024 * 1024
    ping_interval: float = 30.0
    allowed_origins: tuple[str, ...] = ()


class Session(Protocol):
    dialect: str

    @property
    def subscriptions(self) -> int: ...
    def received(self, text: str) -> Any: ...
    def close(self) -> None: ...


class _Throttle:
    """Registered as the socket's producer: says when its send buffer is full.

    Twisted buffers writes without limit; with this, once the transport holds
    more than its bufferSize (64 KiB) we queue in our own, bounded, backlog.
    """

    def __init__(self, protocol: LiveProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol.paused = True

    def resumeProducing(self) -> None:
        self._protocol.drain()

    def stopProducing(self) -> None:
        pass


# The close codes Autobahn fails a connection with, as kinds of bad input.
AUTOBAHN_KINDS = {errors.PROTOCOL_ERROR: "protocol_error", errors.INVALID_PAYLOAD: "not_json",
                  errors.MESSAGE_TOO_BIG: "too_big"}


class LiveProtocol(WebSocketServerProtocol):
    """One browser or phone. Autobahn owns ``self.log``, so ours is ``_log``."""

    _log = Logger()
    factory: LiveFactory

    def __init__(self) -> None:
        super().__init__()
        self.session: Session | None = None
        self.paused = False
        self._backlog: deque[PreparedMessage] = deque()
        self._backlog_bytes = 0
        self._streams: deque[tuple[Iterator[bytes], defer.Deferred[None]]] = deque()
        self._queue: defer.Deferred[None] = defer.succeed(None)
        self._tokens = 0.0
        self._refilled = 0.0

    @property
    def is_live(self) -> bool:
        return bool(self.state == self.STATE_OPEN)

    # -- Autobahn callbacks ---------------------------------------------------

    def onConnect(self, request: Any) -> str | None:
        if SUBPROTOCOL in request.protocols:
            self.session = V2Session(self)
            return SUBPROTOCOL
        self.session = SeedSession(self)
        return None

    def onOpen(self) -> None:
        limits = self.factory.limits
        if len(self.factory.clients) >= limits.max_clients:
            self.refuse(ClientError("server_full", errors.TRY_AGAIN_LATER,
                                    f"server full ({limits.max_clients} clients); retry later"))
            return
        self.factory.clients.add(self)
        self._tokens = 2 * limits.messages_per_second
        self._refilled = self.factory.clock.seconds()
        # Behind twisted.web the HTTP channel is the socket's producer; the
        # WebSocket has taken the socket over, so the throttle replaces it.
        transport: Any = self.transport
        transport.unregisterProducer()
        transport.registerProducer(_Throttle(self), True)

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
        text = payload.decode("utf-8")  # Autobahn has checked it is UTF-8
        # One request at a time, in order: a second seed request moves the
        # subscription only after the first has been checked.
        self._queue.addCallback(lambda _: self._handle(text))

    def onPing(self, payload: bytes) -> None:
        # A client that pings but does not read would have us queue its pongs
        # without limit (pings are not messages: no rate limit applies). One
        # whose socket is full gets no answer until it reads again.
        if not self.paused:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.clients.discard(self)
        # /metrics adds this to what the open clients have been sent so far.
        self.factory.closed_client_bytes += self.trafficStats.outgoingOctetsWireLevel
        self._backlog.clear()
        self._backlog_bytes = 0
        self._end_streams()
        if self.session is not None:
            self.session.close()

    # -- requests -------------------------------------------------------------

    def _handle(self, text: str) -> defer.Deferred[None]:
        if not self.is_live or self.session is None:
            return defer.succeed(None)
        d = defer.maybeDeferred(self.session.received, text)
        return d.addErrback(self._request_failed)

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

    # -- sending --------------------------------------------------------------

    def send_prepared(self, prepared: PreparedMessage) -> None:
        """Send a frame now, or queue it while the socket is full."""
        if self.state != self.STATE_OPEN:
            return
        if self.paused or self._backlog or self._streams:
            self._backlog.append(prepared)
            self._backlog_bytes += len(prepared.payloadHybi)
            if self._backlog_bytes > self.factory.limits.max_queue_bytes:
                self.too_slow()
            return
        self._write_frame(prepared.payloadHybi)

    def _write_frame(self, frame: bytes, now: bool = False) -> None:
        """Autobahn's sendData for a ready frame, minus its per-frame debug-log
        formatting; a client's frames of one reactor turn leave in one send()
        (partysense/fastwrite.py). ``now``: into the transport at once, so that
        its buffer fills and pauses us (draining a backlog, streaming a replay)."""
        if self.send_queue:  # Autobahn has frames of its own waiting: keep the order
            self.sendData(frame)
            return
        if now:
            self.factory.writer.flush_one(self.transport)
            write_now(self.transport, frame)
        else:
            self.factory.writer.write(self.transport, frame)
        self.trafficStats.outgoingOctetsWireLevel += len(frame)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Autobahn's way out for its own frames (close, ping, pong), and ours
        when it has frames queued: our frames of this turn go first, or a
        change could follow the close frame (a protocol error)."""
        self.factory.writer.flush_one(self.transport)
        super().sendData(data, sync, chopsize)

    def send_bytes(self, payload: bytes) -> None:
        self.send_prepared(PreparedMessage(payload, False, False, True))

    def send_json(self, body: dict[str, Any]) -> None:
        import json

        self.send_bytes(json.dumps(body, ensure_ascii=False).encode("utf-8"))

    def stream(self, frames: Iterable[bytes]) -> defer.Deferred[None]:
        """Send many frames (a replay) only as fast as the client reads them.

        Unlike send_prepared, these do not count against the slow-client
        limit: they are produced on demand, never queued. The Deferred fires
        once the last one is written (or the connection is gone).
        """
        done: defer.Deferred[None] = defer.Deferred()
        self._streams.append((iter(frames), done))
        self._pump()
        return done

    def drain(self) -> None:
        """The socket has room again: send what waited, until it is full again."""
        self.paused = False
        self._pump()

    def _pump(self) -> None:
        while not self.paused and self.state == self.STATE_OPEN:
            if self._backlog:
                prepared = self._backlog.popleft()
                self._backlog_bytes -= len(prepared.payloadHybi)
                self._write_frame(prepared.payloadHybi, now=True)
            elif self._streams:
                frames, done = self._streams[0]
                payload = next(frames, None)
                if payload is None:
                    self._streams.popleft()
                    done.callback(None)
                else:
                    frame = PreparedMessage(payload, False, False, True).payloadHybi
                    self._write_frame(frame, now=True)
            else:
                return
        if self.state != self.STATE_OPEN:
            self._end_streams()

    def _end_streams(self) -> None:
        streams, self._streams = self._streams, deque()
        for _, done in streams:
            done.callback(None)

    def too_slow(self) -> None:
        """Close a client that does not read what it is sent (code 4008)."""
        if self.state != self.STATE_OPEN:
            return
        self._backlog.clear()
        self._backlog_bytes = 0
        self.factory.slow_closed += 1
        self.refuse(ClientError(
            "too_slow", errors.TOO_SLOW,
            f"not reading: over {self.factory.limits.max_queue_bytes} bytes queued"))
        # It is not reading, so it will not answer the close frame either.
        self.dropConnection(abort=True)

    # -- closing --------------------------------------------------------------

    def refuse(self, error: ClientError) -> None:
        """Close this client with the error's code and reason, logged once."""
        self._log.info(
            "Closing {peer} ({kind}, code {code}): {reason}",
            peer=self.peer, kind=error.kind, code=error.code, reason=error.reason,
        )
        self.factory.count_bad_input(error.kind)
        if self.session is not None:
            self.session.close()
        self.close_with(error.code, error.reason)

    def _fail_connection(self, code: int = errors.GOING_AWAY, reason: str = "going away") -> None:
        """Autobahn's own checks (message size, UTF-8, framing) end here.

        An open connection is refused like any other bad input: logged once
        in our words and counted by kind. In any other state Autobahn knows
        best.
        """
        if self.state == self.STATE_CLOSING and self.failedByMe:
            # More of the message we refused (invalid UTF-8 fails twice):
            # Autobahn would log it again, then drop the connection, as here.
            self.dropConnection(abort=False)
            return
        if self.state != self.STATE_OPEN:
            super()._fail_connection(code, reason)
            return
        self.failedByMe = True
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
            self.sendCloseFrame(code=code, reasonUtf8=reason_utf8, isReply=False)


class LiveFactory(WebSocketServerFactory):
    protocol = LiveProtocol  # type: ignore[assignment]

    def __init__(self, hub: Hub, events: EventDirectory, listener: ListenerService,
                 clock: Any, limits: Limits | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hub = hub
        self.events = events
        self.listener = listener
        self.clock = clock
        self.writer = TurnWriter(clock)
        self.limits = limits or Limits()
        self.clients: set[LiveProtocol] = set()
        self.bad_inputs: dict[str, int] = {}
        self.slow_closed = 0
        self.closed_client_bytes = 0
        self.setProtocolOptions(
            maxMessagePayloadSize=self.limits.max_message_bytes,
            maxFramePayloadSize=self.limits.max_message_bytes,
            failByDrop=False,          # close with a code and reason, not a dropped socket
            perMessageCompressionAccept=None,  # prepared frames need it off
            autoPingInterval=self.limits.ping_interval,
            autoPingTimeout=self.limits.ping_interval,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=3,
            allowedOrigins=list(self.limits.allowed_origins) or ["*"],
        )

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        # With any Origin allowed, "null" is one too: the seed's example page
        # opened from a file sends it. Autobahn turns allowNullOrigin off on
        # every call that does not name it (tap.py calls this again).
        limits = getattr(self, "limits", None)
        if limits is not None:
            options.setdefault("allowNullOrigin", not limits.allowed_origins)
        super().setProtocolOptions(*args, **options)

    def count_bad_input(self, kind: str) -> None:
        self.bad_inputs[kind] = self.bad_inputs.get(kind, 0) + 1

    def clients_by_dialect(self) -> dict[str, int]:
        counts = {"seed": 0, "v2": 0}
        for client in self.clients:
            if client.session is not None:
                counts[client.session.dialect] += 1
        return counts


class ClientsService(Service):
    """Closes every client with 1001 when the daemon stops.

    Stopped before the web port and the listener (services stop in reverse
    order of start), and never waits longer than ``grace`` seconds: a client
    that does not answer its close frame is dropped.
    """

    _log = Logger()

    def __init__(self, factory: LiveFactory, clock: Any, grace: float = 2.0) -> None:
        self._factory = factory
        self._clock = clock
        self._grace = grace

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        clients = list(self._factory.clients)
        for client in clients:
            self._quietly(client.close_with, errors.GOING_AWAY, "server shutting down")
        done: defer.Deferred[None] = defer.Deferred()

        def check(deadline: float) -> None:
            if not self._factory.clients or self._clock.seconds() >= deadline:
                for client in list(self._factory.clients):
                    self._quietly(client.dropConnection, abort=True)
                done.callback(None)
            else:
                self._clock.callLater(0.05, check, deadline)

        check(self._clock.seconds() + self._grace)
        return done

    def _quietly(self, call: Any, *args: Any, **kwargs: Any) -> None:
        # One client failing to close must not leave the shutdown waiting
        # forever (twistd waits for this Deferred) nor spare the others.
        try:
            call(*args, **kwargs)
        except Exception:
            self._log.failure("Closing a client at shutdown failed")
