"""Helpers for tests: waiting on conditions, a party in SQL, a daemon process."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg2

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


async def eventually(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """For tests on the reactor: await ``condition()`` (a value or an awaitable)
    until it is true, failing at the deadline. The reactor runs meanwhile."""
    from twisted.internet import reactor, task

    deadline = reactor.seconds() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tally(counts: dict[int, list[int]], change: dict[str, Any]) -> None:
    """Apply one change message to per-track [up, down] counts, as a client must."""
    track = counts.setdefault(change["tid"], [0, 0])
    if change["op"] in ("update", "delete"):
        track[0 if change["prev"] else 1] -= 1
    if change["op"] in ("insert", "update"):
        track[0 if change["up"] else 1] += 1


def nonzero(counts: dict[int, list[int]]) -> dict[int, tuple[int, int]]:
    """Counts in the shape of Party.tallies (tracks with no votes left out)."""
    return {tid: (up, down) for tid, (up, down) in counts.items() if up or down}


class Party:
    """A database with events and tracks, and votes cast the way Django casts them."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.connection = psycopg2.connect(dsn)
        self.connection.autocommit = True

    def __enter__(self) -> Party:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.connection.close()

    def query(self, statement: str, params: Any = None) -> list[tuple]:
        with self.connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def event(self, title: str = "Party") -> int:
        return int(self.query("INSERT INTO event_event (title) VALUES (%s) RETURNING id",
                              (title,))[0][0])

    def track(self, name: str | None = "Song", artist: str = "Artist") -> int:
        self.query("INSERT INTO music_artist (name) VALUES (%s) ON CONFLICT DO NOTHING", (artist,))
        return int(self.query(
            "INSERT INTO music_track (artist_id, name) "
            "SELECT id, %s FROM music_artist WHERE name = %s RETURNING id", (name, artist))[0][0])

    def vote(self, event_id: int, track_id: int, up: bool = True, user_id: int = 1) -> int:
        """Django's flow: get_or_create inserts the default, save() sets the direction."""
        vote_id = int(self.query(
            "INSERT INTO event_vote (event_id, track_id, user_id) VALUES (%s, %s, %s) "
            "RETURNING id", (event_id, track_id, user_id))[0][0])
        self.query("UPDATE event_vote SET is_positive = %s WHERE id = %s", (up, vote_id))
        return vote_id

    def tallies(self, event_id: int) -> dict[int, tuple[int, int]]:
        rows = self.query(
            "SELECT track_id, count(*) FILTER (WHERE is_positive), "
            "count(*) FILTER (WHERE NOT is_positive) FROM event_vote WHERE event_id = %s "
            "GROUP BY track_id", (event_id,))
        return {track: (up, down) for track, up, down in rows}


def twistd_command() -> list[str]:
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
    return [twistd]


class Daemon:
    """``twistd -n partysense-live`` run as its users run it, on a free port."""

    def __init__(self, dsn: str | None, workdir: Path, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.workdir = workdir
        self.port = free_port()
        self.extra = list(extra)
        self.env = env
        self.log_path = workdir / f"twistd-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Daemon:
        """Start twistd; if another test run took our free port meanwhile, take another."""
        for _ in range(5):
            self._spawn()
            if not wait:
                return self
            try:
                self.wait_healthy()
                return self
            except AssertionError:
                if "Address already in use" not in self.log() or self.process is None \
                        or self.process.poll() is None:
                    raise
                self.port = free_port()
                self.log_path = self.workdir / f"twistd-{self.port}.log"
        raise AssertionError("no free port found for twistd in 5 tries")

    def _spawn(self) -> None:
        args = twistd_command() + [
            "-n", "--pidfile", str(self.workdir / f"twistd-{self.port}.pid"),
            "--logfile", str(self.log_path),
            "partysense-live", "--port", f"tcp:{self.port}:interface=127.0.0.1",
        ]
        if self.dsn is not None:
            args += ["--dsn", self.dsn]
        env = dict(os.environ if self.env is None else self.env)
        if self.dsn is not None:
            env.pop("PARTYSENSE_DSN", None)
        self.process = subprocess.Popen(args + self.extra, cwd=self.workdir, env=env,
                                        stdin=subprocess.DEVNULL)

    def health(self) -> tuple[int, dict[str, Any]] | None:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except OSError:
            return None

    def wait_healthy(self, timeout: float = 30.0) -> None:
        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"twistd exited with {self.process.returncode}:\n{self.log()}")
            answer = self.health()
            return answer is not None and answer[0] == 200 and self._ours(answer[1].get("pid"))
        wait_for(healthy, timeout, "the daemon to report healthy")

    def _ours(self, pid: int | None) -> bool:
        """Is it our daemon (or one of its --workers) answering, not another test run's?"""
        if pid is None or self.process is None:
            return True
        if pid == self.process.pid:
            return True
        try:
            return pid in {child.pid for child in psutil.Process(self.process.pid).children(
                recursive=True)}
        except psutil.Error:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"twistd did not exit within {timeout} s of SIGTERM") from None

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
