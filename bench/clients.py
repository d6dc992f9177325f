"""Driving the Node load generator processes (bench/loadgen/loadgen.js).

Clients are dealt round-robin over several processes when one would be the
bottleneck or run out of file descriptors; their answers are merged here.
"""

from __future__ import annotations

import json
import math
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "loadgen" / "loadgen.js"


class LoadGenError(RuntimeError):
    pass


class LoadGen:
    """One ``node loadgen.js`` process and its line-by-line conversation."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            ["node", str(SCRIPT), json.dumps(config)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                continue
        self._lines.put(None)

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise LoadGenError(f"no {kind!r} from the load generator in {timeout} s") from None
            if message is None:
                raise LoadGenError(f"the load generator exited before {kind!r}")
            if message.get("type") == "error":
                raise LoadGenError(message.get("error", "unknown error"))
            if message.get("type") == kind:
                return message

    def ask(self, command: dict[str, Any], kind: str, timeout: float) -> dict[str, Any]:
        self.send(command)
        return self.expect(kind, timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


class LoadGens:
    """Several load generators as one."""

    def __init__(self, port: int, subscriptions: list[Any], stalled: list[Any],
                 processes: int, sources: list[str], mode: str = "websocket") -> None:
        """``mode``: "websocket" (seed clients) or "sse" (/events/<id>/stream)."""
        processes = max(1, min(processes, len(subscriptions) + len(stalled)))
        self.gens = [LoadGen({
            "port": port,
            "subscriptions": subscriptions[n::processes],
            "stalled": stalled[n::processes],
            "sourceAddresses": sources,
            "connectDeadlineMs": 180_000,
            "mode": mode,
        }) for n in range(processes)]

    @property
    def pids(self) -> list[int]:
        return [gen.pid for gen in self.gens]

    def connected(self, timeout: float = 200.0) -> dict[str, Any]:
        answers = [gen.expect("connected", timeout) for gen in self.gens]
        failures: dict[str, int] = {}
        for answer in answers:
            _add(failures, answer["failures"])
        return {"failures": failures, "open": sum(a["open"] for a in answers),
                "failed": sum(a["failed"] for a in answers),
                "stalled": sum(a["stalled"] for a in answers),
                "seconds": max(a["seconds"] for a in answers)}

    def status(self) -> dict[str, int]:
        for gen in self.gens:
            gen.send({"cmd": "status"})
        answers = [gen.expect("status", 30) for gen in self.gens]
        return {key: sum(a[key] for a in answers) for key in ("open", "warm", "dropped")}

    def measure(self, first: int, last: int) -> None:
        for gen in self.gens:
            gen.send({"cmd": "measure", "first": first, "last": last})

    def finish(self, votes_path: Path, settle_ms: int, max_wait_ms: int) -> dict[str, Any]:
        for gen in self.gens:
            gen.send({"cmd": "finish", "votes": str(votes_path), "settleMs": settle_ms,
                      "maxWaitMs": max_wait_ms})
        answers = [gen.expect("result", max_wait_ms / 1000 + 60) for gen in self.gens]
        return merge(answers)

    def close(self) -> None:
        for gen in self.gens:
            gen.close()


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0) + value


def merge(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """One verdict from several load generators: sums, merged histograms, percentiles."""
    total: dict[str, Any] = {"failures": {}, "dropCodes": {}, "histogram": {}}
    for key in ("clients", "open", "failed", "dropped", "expected", "delivered", "lost",
                "duplicated", "unexpected", "warmupFrames"):
        total[key] = sum(a[key] for a in answers)
    for answer in answers:
        _add(total["failures"], answer["failures"])
        _add(total["dropCodes"], answer["dropCodes"])
        _add(total["histogram"], answer["histogram"])
    total["latency_max_s"] = max(a["latencyMaxNs"] for a in answers) / 1e9
    arrivals = [a for a in answers if a["delivered"]]
    total["first_arrival_ns"] = min((a["firstArrivalNs"] for a in arrivals), default=0)
    total["last_arrival_ns"] = max((a["lastArrivalNs"] for a in arrivals), default=0)
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        total[f"latency_{name}_s"] = percentile(total["histogram"], q,
                                                total["latency_max_s"])
    stalled: dict[str, Any] = {"count": 0, "stillOpen": 0, "closeCodes": {}}
    for answer in answers:
        stalled["count"] += answer["stalled"]["count"]
        stalled["stillOpen"] += answer["stalled"]["stillOpen"]
        _add(stalled["closeCodes"], answer["stalled"]["closeCodes"])
    total["stalled"] = stalled
    return total


def percentile(histogram: dict[str, int], q: float, maximum: float) -> float:
    """The upper edge of the 1 %-wide bucket holding quantile ``q`` (seconds)."""
    count = sum(histogram.values())
    if not count:
        return math.nan
    wanted = q * count
    seen = 0
    for bucket in sorted(histogram, key=int):
        seen += histogram[bucket]
        if seen >= wanted:
            return min(1e-6 * 1.01 ** (int(bucket) + 1), maximum)
    return maximum
