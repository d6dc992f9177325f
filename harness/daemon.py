"""``twistd -n partysense-live`` as a real process, and waiting on conditions.

The daemon binds port 0: the kernel gives it a free port, and Twisted logs
the port it got ("Site starting on PORT", or "Site (TLS) starting on PORT";
with ``--workers`` each child's line is relayed to the parent's log). The
port is read from there, so no other process can take it between choosing
and binding it, as it could with a port found free beforehand.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

# What twisted.internet.tcp.Port logs once it listens, with the real port.
SITE_STARTING = re.compile(r"\bSite(?: \(TLS\))? starting on (\d+)\b")
# The same for --admin-port.
ADMIN_STARTING = re.compile(r"\bAdminSite(?: \(TLS\))? starting on (\d+)\b")


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


def reported_port(text: str, pattern: re.Pattern[str] = SITE_STARTING) -> int | None:
    """The port in the first "Site starting on PORT" line of a twistd log, if any."""
    found = pattern.search(text)
    return int(found.group(1)) if found else None


def twistd_command() -> list[str]:
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
    return [twistd]


# PARTYSENSE_TEST_SOURCE=wal: every Daemon runs with --source wal.
SOURCE_VARIABLE = "PARTYSENSE_TEST_SOURCE"

_numbers = itertools.count(1)  # names the files of each Daemon apart


class Daemon:
    """``twistd -n partysense-live`` run as its users run it, on a port it binds itself.

    ``port`` is 0 until :meth:`start` has read the bound port from the log.
    A restart (:meth:`start` after :meth:`stop`) binds that same port again,
    so that clients can come back to it; its log goes on in the same file.
    """

    def __init__(self, dsn: str | None, workdir: Path, *extra: str,
                 env: dict[str, str] | None = None, admin: bool = True,
                 open_files: int | None = None) -> None:
        self.dsn = dsn
        # RLIMIT_NOFILE, soft and hard, for twistd (as `ulimit -n`); None: ours.
        self.open_files = open_files
        self.workdir = workdir
        self.port = 0
        self.admin_port = 0  # --admin-port, given unless --workers (or the test) says
        self.admin = admin
        self.extra = list(extra)
        if os.environ.get(SOURCE_VARIABLE) == "wal" and "--source" not in self.extra \
                and dsn is not None:
            # The tests run with --source wal (tests/support.py, TEST_SOURCE): the
            # database is installed for it (idempotent) and every daemon reads the WAL.
            import psycopg2

            from partysense.db import dsn as dsnlib
            from partysense.db import sqlfiles

            try:  # a DSN through a proxy that holds connections must not hang us
                sqlfiles.install(dsnlib.with_defaults(dsn, connect_timeout="3"), wal=True)
            except psycopg2.OperationalError:
                pass  # down or held: whoever made the database installed it (conftest)
            self.extra += ["--source", "wal"]
        self.env = env
        name = f"twistd-{next(_numbers)}"
        self.log_path = workdir / f"{name}.log"
        self.pid_path = workdir / f"{name}.pid"
        self.process: subprocess.Popen[bytes] | None = None
        self._run_starts_at = 0  # where the current run's lines begin in the log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """Where /metrics and the detailed /healthz are (the public port without one)."""
        return f"http://127.0.0.1:{self.admin_port}" if self.admin_port else self.url

    def uses_admin_port(self) -> bool:
        return self.admin and "--workers" not in self.extra and "--admin-port" not in self.extra

    def start(self, wait: bool = True) -> Daemon:
        """Start twistd and wait until it says which port it listens on; with
        ``wait``, also until /healthz answers 200."""
        self.spawn()
        self.wait_listening()
        if wait:
            self.wait_healthy()
        return self

    def spawn(self) -> None:
        """Start the process, without waiting for anything."""
        self._run_starts_at = len(self.log())
        self._spawn()

    def _spawn(self) -> None:
        args = twistd_command() + [
            "-n", "--pidfile", str(self.pid_path), "--logfile", str(self.log_path),
            "partysense-live", "--port", f"tcp:{self.port}:interface=127.0.0.1",
        ]
        if self.dsn is not None:
            args += ["--dsn", self.dsn]
        if self.uses_admin_port():
            args += ["--admin-port", f"tcp:{self.admin_port}:interface=127.0.0.1"]
        env = dict(os.environ if self.env is None else self.env)
        if self.dsn is not None:
            env.pop("PARTYSENSE_DSN", None)
        self.process = subprocess.Popen(args + self.extra, cwd=self.workdir, env=env,
                                        stdin=subprocess.DEVNULL,
                                        preexec_fn=self._limit_open_files)

    def _limit_open_files(self) -> None:
        """In the child, before twistd: the open-files limit the test asked for."""
        if self.open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def wait_listening(self, timeout: float = 30.0) -> int:
        """The port this run reports listening on (kept in ``port``); fails if
        twistd exits first or says nothing within ``timeout``."""
        def reported() -> int | None:
            port = reported_port(self.log()[self._run_starts_at:])
            if port is None and self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"twistd exited with {self.process.returncode} before "
                                     f"listening:\n{self.log()}")
            return port
        self.port = wait_for(reported, timeout, "twistd to report the port it listens on")
        if self.uses_admin_port():
            self.admin_port = wait_for(
                lambda: reported_port(self.log()[self._run_starts_at:], ADMIN_STARTING),
                timeout, "twistd to report its admin port")
        return self.port

    def health(self) -> tuple[int, dict[str, Any]] | None:
        try:
            with urllib.request.urlopen(self.admin_url + "/healthz", timeout=2) as response:
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
        """Is it our daemon (or one of its --workers) answering, not another process's?"""
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
