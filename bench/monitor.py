"""Sampling what the processes cost while a scenario runs (psutil, 4 times a second).

- the service: peak RSS and CPU seconds of its process tree (workers included);
- PostgreSQL: backends in use (pg_stat_activity, ours excluded) and the CPU
  seconds of the whole server (the Node service moves its fan-out there);
- the load side: CPU seconds of the load generator processes and of this one.
"""

from __future__ import annotations

import resource
import threading
import time
from dataclasses import dataclass, field

import psutil
import psycopg2

BACKENDS_QUERY = """
    SELECT count(*) FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND datname = current_database()
      AND NOT (pid = ANY(%s))
"""


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class CpuMeter:
    """CPU seconds used by a set of process trees, summed per pid (pids come and go)."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def sample(self) -> float:
        rss = 0.0
        for root in self.roots:
            for process in _tree(root):
                try:
                    with process.oneshot():
                        times = process.cpu_times()
                        rss += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                used = times.user + times.system
                self._first.setdefault(process.pid, used)
                self._last[process.pid] = used
        return rss

    def reset(self) -> None:
        self._first = dict(self._last)

    @property
    def seconds(self) -> float:
        return sum(self._last[pid] - self._first.get(pid, 0.0) for pid in self._last)


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Usage:
    service_cpu_s: float = 0.0
    service_rss_peak: float = 0.0
    service_rss_start: float = 0.0
    service_rss_mid: float = 0.0
    service_rss_end: float = 0.0
    postgres_cpu_s: float = 0.0
    backends_peak: int = 0
    loadgen_cpu_s: float = 0.0
    generator_cpu_s: float = 0.0
    seconds: float = 0.0
    rss_series: list[float] = field(default_factory=list)


class Monitor:
    """Samples in a thread from start() to stop(); ``usage`` holds the verdict."""

    def __init__(self, dsn: str, own_backends: list[int], interval: float = 0.25) -> None:
        """Connects now: later the service under test may hold every connection."""
        self.dsn = dsn
        self.service = CpuMeter([])
        self.loadgen = CpuMeter([])
        self.own_backends = list(own_backends)
        self.interval = interval
        self.usage = Usage()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection = psycopg2.connect(dsn)
        self._connection.autocommit = True
        self.own_backends.append(self._connection.get_backend_pid())
        self.postgres = CpuMeter([self._postmaster()])

    def _postmaster(self) -> int:
        try:
            return psutil.Process(self._connection.get_backend_pid()).ppid()
        except psutil.NoSuchProcess:  # a PostgreSQL on another machine
            return 0

    def backends(self) -> int:
        with self._connection.cursor() as cursor:
            cursor.execute(BACKENDS_QUERY, (self.own_backends,))
            return int(cursor.fetchone()[0])

    def _sample(self) -> None:
        rss = self.service.sample()
        self.loadgen.sample()
        self.postgres.sample()
        self.usage.service_rss_peak = max(self.usage.service_rss_peak, rss)
        self.usage.rss_series.append(rss)
        self.usage.backends_peak = max(self.usage.backends_peak, self.backends())

    def start(self, service_pid: int, loadgen_pids: list[int]) -> None:
        self.service.roots = [service_pid]
        self.loadgen.roots = list(loadgen_pids)
        self._sample()
        for meter in (self.service, self.loadgen, self.postgres):
            meter.reset()
        self.usage.service_rss_start = self.usage.rss_series[-1]
        self._started = time.monotonic()
        self._self_cpu = self_cpu_seconds()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except (psycopg2.Error, psutil.Error):
                pass

    def stop(self) -> Usage:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._sample()
        except (psycopg2.Error, psutil.Error):
            pass
        self._connection.close()
        usage = self.usage
        usage.seconds = time.monotonic() - self._started
        usage.service_cpu_s = self.service.seconds
        usage.loadgen_cpu_s = self.loadgen.seconds
        usage.postgres_cpu_s = self.postgres.seconds
        usage.generator_cpu_s = self_cpu_seconds() - self._self_cpu
        usage.service_rss_end = usage.rss_series[-1]
        usage.service_rss_mid = usage.rss_series[len(usage.rss_series) // 2]
        return usage
