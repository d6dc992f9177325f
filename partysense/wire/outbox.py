"""One client's frames on their way out: written now, or held (bounded) while
its socket is full.

Twisted buffers writes without limit. The outbox registers itself as the
socket's producer, so the transport says when its buffer (64 KiB) is full;
from then on frames wait here, counted, and a client whose backlog passes
``max_bytes`` is handed to ``overflow`` (its owner closes it: 4008 for a
WebSocket). Its frames' way out, and the rules of their order, are the
client's sink (partysense/wire/sink.py).
A replay is streamed: produced one frame at a time, only as fast as the
client reads, and not counted against the limit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from twisted.internet import defer

# write(frame, now): now=True puts it into the transport at once, so that
# the transport's buffer fills and pauses us (a backlog, a stream).
Write = Callable[[bytes, bool], None]


class Outbox:
    """A client's outgoing frames (wire bytes), in order, with a bounded backlog."""

    def __init__(self, write: Write, is_open: Callable[[], bool], max_bytes: int,
                 overflow: Callable[[], None]) -> None:
        self._write = write
        self._is_open = is_open
        self._max_bytes = max_bytes
        self._overflow = overflow
        self.paused = False
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._streams: deque[tuple[Iterator[bytes], defer.Deferred[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Frames held back because the socket is full."""
        return len(self._backlog)

    @property
    def waiting_bytes(self) -> int:
        return self._backlog_bytes

    def send(self, frame: bytes) -> None:
        """Write a frame now, or hold it while the socket is full."""
        if self.paused or self._backlog or self._streams:
            self._backlog.append(frame)
            self._backlog_bytes += len(frame)
            if self._backlog_bytes > self._max_bytes:
                self._overflow()
            return
        self._write(frame, False)

    def stream(self, frames: Iterable[bytes]) -> defer.Deferred[None]:
        """Write many frames (a replay) only as fast as the client reads them.

        The Deferred fires once the last one is written (or the client is gone).
        """
        done: defer.Deferred[None] = defer.Deferred()
        self._streams.append((iter(frames), done))
        self._pump()
        return done

    def discard(self) -> None:
        """Forget the backlog (a client closed for not reading)."""
        self._backlog.clear()
        self._backlog_bytes = 0

    def close(self) -> None:
        """The client is gone: nothing more is written; streams end."""
        self.discard()
        self._end_streams()

    # -- IPushProducer: the transport pauses us when its buffer is full --------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def stopProducing(self) -> None:
        pass

    def _pump(self) -> None:
        while not self.paused and self._is_open():
            if self._backlog:
                frame = self._backlog.popleft()
                self._backlog_bytes -= len(frame)
                self._write(frame, True)
            elif self._streams:
                frames, done = self._streams[0]
                streamed = next(frames, None)
                if streamed is None:
                    self._streams.popleft()
                    done.callback(None)
                else:
                    self._write(streamed, True)
            else:
                return
        if not self._is_open():
            self._end_streams()

    def _end_streams(self) -> None:
        streams, self._streams = self._streams, deque()
        for _, done in streams:
            done.callback(None)
