"""A client's frames of one reactor turn (or of ``--write-delay``) leave in one ``send()``.

Each batch goes out with ``write_now`` (partysense/adapters/twisted_adapter.py),
which skips the reactor round trip when the socket's buffer is empty.
"""

from __future__ import annotations

from typing import Any

from partysense.adapters.twisted_adapter import write_now


class TurnWriter:
    """Frames written to one client during one reactor turn leave in one ``send()``.

    A notification fans out to every subscriber within one turn; when the
    daemon falls behind, the listener reads several notifications per turn,
    and each client would get a ``send()`` per notification. Here a client's
    frames wait until the end of the turn (``callLater(0)``: after everything
    already readable has been handled) and go out together, so the busier
    the daemon, the fewer system calls per frame. Every frame of a protocol
    must go through the same writer, or order is lost; ``flush_one`` sends a
    client's frames before something written around the writer (a close). The
    rules of a client's frame order are in partysense/wire/sink.py.

    With a ``delay`` (``--write-delay``) the frames wait that long instead of
    one turn, so that even at a party's pace several share a ``send()``.
    """

    def __init__(self, clock: Any, flush_bytes: int = 64 * 1024, delay: float = 0.0) -> None:
        self._clock = clock
        # --write-delay: a send() costs the same CPU for one frame as for
        # sixteen (the receiver's TCP work is charged to the sender on
        # loopback, and a syscall's fixed cost dominates small frames), so
        # frames may wait up to this long to share one. One timer for the
        # whole writer, started by the first frame waiting: no frame waits
        # longer than ``delay``, and nothing is scheduled per client.
        self._delay = delay
        # A client's frames go out early once they reach this (a transport's
        # own bufferSize): a catch-up can hand a client thousands of frames in
        # one turn, and only the transport, by pausing its producer, tells the
        # protocol to queue in its bounded backlog instead.
        self._flush_bytes = flush_bytes
        self._pending: dict[Any, list[bytes]] = {}
        self._pending_bytes: dict[Any, int] = {}
        self._scheduled: Any = None  # the DelayedCall of the next flush
        # Within a batch of one change (begin_batch): each client's frame goes
        # out at once, with nothing left to share its send().
        self._through = False
        self.sends = 0

    def write(self, transport: Any, data: bytes) -> None:
        if self._through and transport not in self._pending:
            self.sends += 1
            write_now(transport, data)
            return
        frames = self._pending.get(transport)
        if frames is None:
            frames = self._pending[transport] = []
            if self._scheduled is None:
                self._scheduled = self._clock.callLater(self._delay, self.flush)
        frames.append(data)
        size = self._pending_bytes[transport] = self._pending_bytes.get(transport, 0) + len(data)
        if size >= self._flush_bytes:
            self.flush_one(transport)

    def begin_batch(self, count: int) -> None:
        """A batch of ``count`` notifications is about to be handed on.

        One vote is two notifications (its event's channel and the firehose)
        of one change, and a client gets one frame of it per channel it
        follows: nothing else of the batch would share its ``send()``, so
        each frame goes out as it is made, without waiting for the rest of
        the fan-out (the first clients see the vote sooner, and the frames
        are not held and looked up again). A bigger batch (the daemon is
        behind) is coalesced as before; so is everything with
        ``--write-delay``.
        """
        self._through = self._delay == 0 and count <= 2

    def end_of_batch(self) -> None:
        """A batch of changes has been handed on (one read of notifications): send
        what it made now, without waiting for the reactor's next turn.

        At a party's pace each vote is a batch of its own, and the extra turn
        (a timer, an epoll_wait, the reactor's bookkeeping) cost as much as
        several frames. Frames of one batch still share a ``send()``. Not
        with ``--write-delay``: then frames wait on purpose.
        """
        self._through = False
        if self._delay == 0 and self._scheduled is not None:
            self._scheduled.cancel()
            self.flush()

    def flush(self) -> None:
        self._scheduled = None
        pending, self._pending = self._pending, {}
        self._pending_bytes = {}
        self.sends += len(pending)
        for transport, frames in pending.items():
            write_now(transport, frames[0] if len(frames) == 1 else b"".join(frames))

    def flush_one(self, transport: Any) -> None:
        frames = self._pending.pop(transport, None)
        self._pending_bytes.pop(transport, None)
        if frames:
            write_now(transport, b"".join(frames))
