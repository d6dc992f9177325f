"""One client's way out, for a WebSocket and an SSE stream alike: its outbox,
the per-turn writer, and the bytes written. The order of a client's frames is
decided here, and only here:

1. A frame goes through the client's outbox (partysense/wire/outbox.py):
   written at once, or, while the socket is full (the transport paused the
   outbox) or a backlog or a replay is still going out, queued behind them.
   A replay (``outbox.stream``) goes out before live frames queued after it;
   the live frames held while it is read wait in the subscriber's gate
   (partysense/dialects/catchup.py) and follow it.
2. Written, a frame joins the client's other frames of this reactor turn in
   the shared ``TurnWriter`` (partysense/wire/fastwrite.py), which sends them
   in one ``send()``; from the outbox's backlog (``now``) it goes into the
   transport at once, after whatever the writer still holds for the client.
3. Anything written around the writer (Autobahn's own close, ping and pong
   frames; the last chunk of an SSE response) is preceded by ``flush()``, so
   that nothing of ours follows it.
4. While Autobahn still queues frames of its own (``detour``), ours go behind
   them, through Autobahn, or a change could overtake its close frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from partysense.adapters.twisted_adapter import write_now
from partysense.wire.fastwrite import TurnWriter
from partysense.wire.outbox import Outbox


class Sink:
    """Where a client's frames go: ``outbox.send(frame)``; ``bytes_sent`` so far.

    ``is_open``: whether the client may still be written to. ``overflow``: its
    backlog passed ``max_bytes`` (the owner closes it). ``detour(frame)``: True
    if it took the frame itself (Autobahn's queue, rule 4).
    """

    __slots__ = ("outbox", "bytes_sent", "_transport", "_writer", "_detour")

    def __init__(self, transport: Any, writer: TurnWriter, max_bytes: int,
                 is_open: Callable[[], bool], overflow: Callable[[], None],
                 detour: Callable[[bytes], bool] | None = None) -> None:
        self._transport = transport
        self._writer = writer
        self._detour = detour
        self.bytes_sent = 0
        self.outbox = Outbox(self.write, is_open, max_bytes, overflow)

    def write(self, data: bytes, now: bool) -> None:
        """Into this turn's one ``send()``, or (``now``) into the transport at once,
        so that its buffer fills and pauses the outbox."""
        if self._detour is not None and self._detour(data):
            return
        if now:
            self._writer.flush_one(self._transport)
            write_now(self._transport, data)
        else:
            self._writer.write(self._transport, data)
        self.bytes_sent += len(data)

    def flush(self) -> None:
        """Send what the writer holds for this client now, before something
        written around it (rule 3)."""
        self._writer.flush_one(self._transport)
