"""Every frame a client sends counts: a budget of frames per connection.

Autobahn answers a ping, reads a continuation frame and handles a pong or a
close before anything reaches ``LiveProtocol.onMessage``, where the message
rate limit (``--max-messages-per-second``) is. So pings, pongs, closes and
fragments were free: one connection pinging as fast as it could, or sending
a text frame with FIN=0 and then empty continuation frames without end,
held a core and was never closed, before any token or subscribe.

Here every frame a client sends (text, binary, continuation, ping, pong,
close) counts against a budget of its own: ``FRAMES_PER_MESSAGE`` times the
message rate a second (a client's pongs and a message's fragments are frames
too); and one message may come in at most ``MAX_FRAGMENTS`` frames. Past
either the client is closed with 4029.

The count runs on every frame the daemon reads, so it is one addition and a
comparison or two; the clock is read once per budget's worth of frames, not
once per frame.
"""

from __future__ import annotations

from typing import Any

from partysense.core import errors
from partysense.core.addresses import network_of
from partysense.core.errors import ClientError

# A budget of frames a second for each message a second the client may send.
FRAMES_PER_MESSAGE = 8
# Frames one message may come in. Browsers send a message in one frame, and a
# message is at most --max-message-bytes (4096) long: 16 is generous.
MAX_FRAGMENTS = 16

CONTINUATION = 0
FIRST_CONTROL_OPCODE = 8  # close 8, ping 9, pong 10


class FrameBudget:
    """The frames one connection may send: ``per_second`` in any one-second
    window, and a message in at most ``max_fragments`` frames.

    A window opens at the first frame after the last one closed and lasts a
    second; a frame past ``per_second`` in it is refused. (Two windows back to
    back allow a burst of twice ``per_second``.) Counting, not a token bucket:
    no clock on the path of every frame.
    """

    def __init__(self, clock: Any, per_second: float,
                 max_fragments: int = MAX_FRAGMENTS) -> None:
        self._clock = clock
        # At least one a second: a zero message rate (every message refused)
        # still lets the close handshake through.
        self.per_second = max(1, int(per_second))
        self.max_fragments = max_fragments
        self._counted = 0  # frames in this window
        self._since = clock.seconds()
        self._fragments = 0  # frames of the message being read

    def refusal(self, opcode: int) -> ClientError | None:
        """Count one frame (its opcode); None while within budget, else why
        the client is to be closed."""
        self._counted += 1
        if opcode == CONTINUATION:
            self._fragments += 1
            if self._fragments > self.max_fragments:
                return ClientError(
                    "too_many_fragments", errors.FLOOD,
                    f"a message in more than {self.max_fragments} frames")
        elif opcode < FIRST_CONTROL_OPCODE:  # a message's first frame
            self._fragments = 1
        if self._counted > self.per_second:
            return self._next_window()
        return None

    def _next_window(self) -> ClientError | None:
        now = self._clock.seconds()
        if now - self._since < 1.0:
            return ClientError(
                "frame_flood", errors.FLOOD,
                f"more than {self.per_second} frames a second "
                "(pings, pongs and fragments count)")
        self._counted = 1
        self._since = now
        return None


# How long an address that sent a frame flood is remembered, and how long each
# new connection from it then waits before it is read.
FLOOD_MEMORY = 10.0
HOLD = 1.0
# Addresses remembered at most (a flood from many addresses must not grow the
# memory without bound): past it the one flagged longest ago is forgotten.
MOST_REMEMBERED = 10_000


class FloodedAddresses:
    """Addresses whose clients were closed for a frame flood lately.

    A closed flooder reconnects at once and floods again: a per-connection
    budget alone would let it cost us a handshake and a budget of frames each
    time, as fast as it can reconnect. So for ``memory`` seconds after a flood
    each new connection from the address waits ``hold`` seconds before it is
    read. Its other connections, and other addresses, are not touched; a guest
    behind the same NAT only connects a second later.
    """

    def __init__(self, clock: Any, memory: float = FLOOD_MEMORY, hold: float = HOLD,
                 most: int = MOST_REMEMBERED) -> None:
        self._clock = clock
        self.memory = memory
        self.hold = hold
        self._most = most
        self._until: dict[str, float] = {}  # address -> end of its memory, oldest first

    def flooded(self, address: str) -> None:
        """A client from ``address`` was closed for a frame flood."""
        address = network_of(address)  # an IPv6 client's /64 is one address here
        self._until.pop(address, None)  # to the end: the order stays oldest first
        self._until[address] = self._clock.seconds() + self.memory
        if len(self._until) > self._most:
            del self._until[next(iter(self._until))]

    def hold_for(self, address: str) -> float:
        """Seconds a new connection from ``address`` waits before it is read (0: none)."""
        address = network_of(address)
        until = self._until.get(address)
        if until is None:
            return 0.0
        if until <= self._clock.seconds():
            del self._until[address]
            return 0.0
        return self.hold
