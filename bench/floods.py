"""Frame flooders for ``bench.query_load --abuse`` (issue 15), in a child process.

Each flooder is one connection at a time sending pings, or a FIN=0 text frame
and then empty continuation frames, as fast as its socket takes them
(harness/frameflood.py), reading what comes back. When the daemon closes it,
it connects again at once and floods again, until the window ends: the worst
one attacker can do with a per-connection budget. No token, no subscribe.

The same interface as ``query_load.Abusers`` (ready, go, finish, close), so a
round runs either.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from harness.frameflood import flood


@dataclass
class FloodStats:
    connections: int = 0                 # opened in the window (every reconnect counts)
    connect_failures: int = 0
    closes: dict[str, int] = field(default_factory=dict)  # close code -> connections
    first_close_s: float | None = None   # after the window's start
    longest_s: float = 0.0               # the longest one connection flooded
    bytes_sent: int = 0


def _flooder(port: int, kind: str, end: float, stop: Any, stats: FloodStats,
             lock: threading.Lock, start: float) -> None:
    while not stop.is_set() and (left := end - time.time()) > 0.05:
        try:
            flooded = flood(port, kind, left)
        except OSError:
            with lock:
                stats.connect_failures += 1
            time.sleep(0.05)
            continue
        with lock:
            stats.connections += 1
            stats.bytes_sent += flooded.bytes_sent
            stats.longest_s = max(stats.longest_s, flooded.seconds)
            if flooded.code is not None:
                code = str(flooded.code)
                stats.closes[code] = stats.closes.get(code, 0) + 1
                after = time.time() - start
                if stats.first_close_s is None or after < stats.first_close_s:
                    stats.first_close_s = after


def floods_main(port: int, kind: str, count: int, pipe: Connection, stop: Any) -> None:
    """The child process: wait for "go", flood until the window's end, report."""
    try:
        pipe.send(("ready", count))
        if not pipe.poll(60):
            return
        _, start, end, _until = pipe.recv()
        time.sleep(max(0.0, start - time.time()))
        stats, lock = FloodStats(), threading.Lock()
        threads = [threading.Thread(target=_flooder, daemon=True,
                                    args=(port, kind, end, stop, stats, lock, start))
                   for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(1.0, end - time.time() + 5))
        with lock:
            pipe.send(("done", asdict(stats)))
    except Exception as error:  # reported, not swallowed: the parent prints it
        pipe.send(("failed", repr(error)))
    finally:
        pipe.close()


class Flooders:
    """``count`` flooding connections of one kind ("ping", "fragments") in a child process."""

    def __init__(self, port: int, kind: str, count: int) -> None:
        self.count = count
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.pipe, child = context.Pipe()
        self.process: Any = context.Process(
            target=floods_main, args=(port, kind, count, child, self.stop), daemon=True)
        self.process.start()
        child.close()

    def _recv(self, timeout: float) -> Any:
        if not self.pipe.poll(timeout):
            raise RuntimeError(f"flooders: no answer within {timeout:g} s")
        message = self.pipe.recv()
        if message[0] == "failed":
            raise RuntimeError(f"flooders failed: {message[1]}")
        return message

    def ready(self) -> int:
        return int(self._recv(60)[1])

    def go(self, start: float, end: float, until: float) -> None:
        self.pipe.send(("go", start, end, until))

    def finish(self) -> FloodStats:
        self.stop.set()
        try:
            return FloodStats(**self._recv(30)[1])
        finally:
            self.close()

    def close(self) -> None:
        if self.process is not None:
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        self.process = None
