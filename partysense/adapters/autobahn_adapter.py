"""Autobahn, as the daemon needs it: every name we use beyond its public API.

Autobahn's server protocol does the WebSocket handshake, framing, pings and
the closing handshake; we need a few things it offers no public way to do:

- a frame prepared once and written to thousands of clients without being
  copied or re-framed (``PreparedMessage.payloadHybi``);
- a write path of our own that still keeps order with Autobahn's own frames
  (``send_queue``, ``sendData``) and still counts bytes
  (``trafficStats.outgoingOctetsWireLevel``);
- Autobahn's own refusals (message too big, bad UTF-8, bad framing) handed
  to us to log and count our way (``_fail_connection``, ``failedByMe``);
- ``allowNullOrigin`` kept across calls (``setProtocolOptions`` resets it);
- the factory's settings handed to its protocol class once, not copied (and
  formatted for a debug line) on every connection (``CONFIG_ATTRS``).

- the handshake's answer sent at once, as our frames are (``sendData`` in
  the connecting state, ``trafficStats.preopenOutgoingOctetsWireLevel``);
- every frame the client sends, control frames and continuations included,
  seen as it begins, to count it (``onFrameBegin``, ``current_frame.opcode``):
  Autobahn's public hooks see pings and pongs but not closes, and fragments
  only once a message has begun;
- a flooding client's bytes read but not yet parsed dropped at once
  (``data``): a 64 KiB read holds thousands of pings;
- Autobahn's own log lines about a connection (a failed handshake, a
  dropped connection: two warnings per bad client) handed to the protocol,
  which bounds them per address (``log``, replaced on each connection);
  the request target and the bytes each way for the access log
  (``http_request_uri``, ``trafficStats``);
- a close frame with any code, the protocol-level ones (1001, 1003, 1007,
  1008, 1013) included: the public ``sendClose`` takes only 1000 and
  3000-4999 (``sendCloseFrame``, documented there as internal).

Private names used: ``PreparedMessage.payloadHybi``, ``send_queue``,
``sendData``, ``trafficStats``, ``_fail_connection``, ``failedByMe``,
``allowNullOrigin``, ``CONFIG_ATTRS``, ``logOctets``, ``onFrameBegin``,
``current_frame``, ``data``, ``log``, ``http_request_uri``,
``closedByMe``, ``localCloseCode``, ``localCloseReason``,
``trafficStats.incomingOctetsWireLevel`` and its ``preopen`` twins,
``sendCloseFrame``. Canaries:
tests/test_adapters_autobahn.py.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage

from partysense.adapters.twisted_adapter import write_now

# A text message as it goes on the wire, frame header included.
Frame = bytes


def prepare(payload: bytes) -> Frame:
    """A text message framed once, to send as it is to any number of clients.

    Unmasked (server to client) and uncompressed: permessage-deflate is off,
    and it would defeat the point of framing once for everybody.
    """
    return bytes(PreparedMessage(payload, False, False, True).payloadHybi)


# Autobahn's own logger (txaio's), shared by every connection.
AUTOBAHN_LOG: Any = WebSocketServerProtocol.log
# The levels an operator sees: Autobahn's lines at these go through autobahn_logged().
OPERATOR_LEVELS = ("info", "warn", "error", "critical", "failure")


def log_as_autobahn(level: str, format: str, fields: dict[str, Any]) -> None:
    """Log a line as Autobahn would have."""
    getattr(AUTOBAHN_LOG, level)(format, **fields)


class _ConnectionLog:
    """Autobahn's ``self.log`` for one connection: debug and trace as they were
    (off unless asked for), the operators' levels handed to the protocol's
    ``autobahn_logged``. The protocol is held weakly: no reference cycle."""

    __slots__ = ("_protocol", "debug", "trace")

    def __init__(self, protocol: ServerProtocol) -> None:
        self._protocol = weakref.ref(protocol)
        self.debug = AUTOBAHN_LOG.debug
        self.trace = AUTOBAHN_LOG.trace

    def __getattr__(self, name: str) -> Any:
        if name in OPERATOR_LEVELS:
            return lambda format, **fields: self._hand(name, format, fields)
        return getattr(AUTOBAHN_LOG, name)

    def _hand(self, level: str, format: str, fields: dict[str, Any]) -> None:
        protocol = self._protocol()
        if protocol is None:
            log_as_autobahn(level, format, fields)
        else:
            protocol.autobahn_logged(level, format, fields)


class ServerProtocol(WebSocketServerProtocol):
    """Autobahn's server protocol, with the hooks our write path and logging need."""

    def __init__(self) -> None:
        super().__init__()
        self.log = _ConnectionLog(self)

    def autobahn_logged(self, level: str, format: str, fields: dict[str, Any]) -> None:
        """Autobahn logs a line about this connection at an operator's level."""
        log_as_autobahn(level, format, fields)

    @property
    def request_target(self) -> bytes:
        """The handshake's request target as it came (``/?token=...``); b"" before it."""
        target = getattr(self, "http_request_uri", None)
        return target.encode("iso-8859-1", "replace") if target else b""

    def close_said(self, code: int | None, reason: str | None) -> tuple[int | None, str | None]:
        """The close code and reason to log: ours if we closed first, else the
        ones onClose() was given."""
        if getattr(self, "closedByMe", False) and self.localCloseCode is not None:
            return self.localCloseCode, self.localCloseReason
        return code, reason

    @property
    def wire_bytes(self) -> tuple[int, int]:
        """Bytes (sent, received) on the socket so far, the handshake included."""
        stats = self.trafficStats
        return (self.bytes_sent + int(stats.preopenOutgoingOctetsWireLevel),
                int(stats.incomingOctetsWireLevel + stats.preopenIncomingOctetsWireLevel))

    def start_closing_handshake(self, code: int, reason_utf8: bytes) -> None:
        """Send a close frame with ``code`` (any, 1001-1015 included) and
        ``reason_utf8`` (at most 123 bytes of UTF-8), and wait for the client's."""
        self.sendCloseFrame(code=code, reasonUtf8=reason_utf8, isReply=False)

    def refused_by_autobahn(self, code: int, reason: str) -> None:
        """Autobahn refused what an open connection sent; close it our way."""
        raise NotImplementedError

    def before_autobahn_writes(self) -> None:
        """Autobahn is about to write a frame of its own (close, ping, pong)."""

    def frame_begins(self, opcode: int) -> None:
        """The client's next frame has begun (its header is read): any opcode,
        0 (continuation), 1 (text), 2 (binary), 8 (close), 9 (ping), 10 (pong)."""

    def onFrameBegin(self) -> None:
        # Autobahn calls it once per frame read, before the frame's payload
        # and whatever it then does with it (answer a ping, close, ...).
        self.frame_begins(self.current_frame.opcode)
        super().onFrameBegin()

    reading_stopped = False

    def stop_reading(self) -> None:
        """Read nothing more from this client: what it sent that is not parsed
        yet is dropped, and its socket is no longer read (its sends block and
        cost us nothing). The closing handshake's timeout then drops it."""
        self.reading_stopped = True
        # Autobahn's buffer of bytes read and not yet parsed: its parse loop
        # ends when it finds it empty.
        self.data = b""
        transport: Any = self.transport  # a TCP or TLS transport: a push producer
        transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self.reading_stopped:
            super().dataReceived(data)

    def queued_behind_autobahn(self, frame: bytes) -> bool:
        """If Autobahn has frames of its own queued, queue ``frame`` behind them
        (Autobahn counts its bytes) and say so: ours must not overtake them."""
        if not self.send_queue:
            return False
        self.sendData(frame)
        return True

    def bytes_around_autobahn(self) -> int:
        """Bytes we wrote around Autobahn (partysense/wire/sink.py counts them)."""
        return 0

    @property
    def bytes_sent(self) -> int:
        """WebSocket bytes (frame headers included) written to this client."""
        return int(self.trafficStats.outgoingOctetsWireLevel) + self.bytes_around_autobahn()

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        self.before_autobahn_writes()
        if self.state == self.STATE_CONNECTING and not (sync or chopsize or self.send_queue
                                                        or getattr(self, "logOctets", True)):
            # The handshake's answer: sent at once (write_now), not after a
            # reactor round trip, and without Autobahn's debug line for it.
            write_now(self.transport, data)
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
            return
        super().sendData(data, sync, chopsize)

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        """Autobahn's own checks (message size, UTF-8, framing) end here.

        On an open connection they go to refused_by_autobahn(). In any other
        state Autobahn knows best.
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
        self.refused_by_autobahn(code, reason)


class ServerFactory(WebSocketServerFactory):
    """Autobahn's server factory; ``allow_null_origin`` survives every setProtocolOptions.

    Its settings are given to its connections once, not on every connection:
    Autobahn's ``_connectionMade`` copies each of ``CONFIG_ATTRS`` (30-odd
    options) from the factory to the new protocol and ``pformat``s the lot
    for a debug line, logged or not: about a quarter of the daemon's CPU while
    thousands of clients connect. Here every setProtocolOptions makes a
    subclass of the protocol class holding the settings as class attributes,
    with nothing left in ``CONFIG_ATTRS`` to copy (or to format).
    """

    allow_null_origin = False
    _settled: Any = None  # (the class made by _settle_protocol, the class it extends)

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        # Autobahn turns allowNullOrigin off on every call that does not name it.
        options.setdefault("allowNullOrigin", self.allow_null_origin)
        super().setProtocolOptions(*args, **options)
        self._settle_protocol()

    def _settle_protocol(self) -> None:
        made: Any
        base: Any
        made, base = self._settled or (None, None)
        if self.protocol is not made:  # a protocol class set since: settle that one
            base = self.protocol
        # A function among them (perMessageCompressionAccept) must stay a plain
        # attribute: as a class attribute it would become a method.
        settings = {name: staticmethod(value) if inspect.isfunction(value) else value
                    for name, value in ((name, getattr(self, name))
                                        for name in base.CONFIG_ATTRS)}
        made = type(base.__name__, (base,), {
            **settings, "CONFIG_ATTRS": (), "__module__": base.__module__,
            "__doc__": base.__doc__})
        self._settled = (made, base)
        self.protocol = made
