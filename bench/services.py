"""The services under test, started as their operators start them.

- partysense-live: ``twistd -n partysense-live --port ... --dsn ...``
- the old Node service: ``node --unhandled-rejections=warn main.js`` with PG*
  variables and PORT (without the flag it exits when a client disconnects).
- the asyncio reference (bench/asyncio_bridge.py): ``python -m
  bench.asyncio_bridge --port ...`` with the same PG* variables.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.database import libpq_environment
from harness.daemon import reported_port

# The old Node service: ../shared/reference/seed-node/ beside this checkout, or wherever
# PARTYSENSE_SEED_NODE says. Without it the benchmarks measure partysense-live alone.
CHECKOUT = Path(__file__).resolve().parent.parent
SEED_NODE = Path(os.environ.get("PARTYSENSE_SEED_NODE")
                 or CHECKOUT.parent / "shared" / "reference" / "seed-node")
NODE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "partysense-bench"


def free_port() -> int:
    """A port free now, for the Node service (it cannot say which port it got)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(condition, timeout: float, what: str, process: subprocess.Popen) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready within {timeout} s")
        time.sleep(0.05)


class Running:
    """A started service: its process, its port, and how to stop it."""

    def __init__(self, name: str, process: subprocess.Popen, port: int,  # type: ignore[type-arg]
                 log_path: Path) -> None:
        self.name = name
        self.process = process
        self.port = port
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def start_partysense(dsn: str, workdir: Path, workers: int = 1,
                     backlog: int = 4096, write_delay: float = 0.0,
                     twistd: str | None = None, source: str = "listen") -> Running:
    """twistd on port 0: the kernel picks a free port, and Twisted logs which
    ("Site starting on PORT"; with --workers, relayed from a worker).

    ``twistd``: another tree's (its venv's) to compare with, e.g. the code
    before a change (bench/storm.py --tree); default: this interpreter's.
    ``source``: ``--source`` (``wal``: on a database installed for it,
    bench.database.wal_mode).
    """
    twistd = twistd or shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
    handle, name = tempfile.mkstemp(prefix="partysense-", suffix=".log", dir=workdir)
    os.close(handle)
    log_path = Path(name)
    args = [twistd, "-n", "--pidfile=", "--logfile", str(log_path), "partysense-live",
            "--port", f"tcp:0:interface=127.0.0.1:backlog={backlog}", "--dsn", dsn]
    if workers != 1:
        args += ["--workers", str(workers)]
    if write_delay:
        args += ["--write-delay", f"{write_delay:g}"]
    if source != "listen":
        args += ["--source", source]
    # The load generators' clients come from a handful of loopback addresses
    # (--sources), thousands each: not one machine opening too many sockets.
    args += ["--max-connections-per-ip", "1000000"]
    env = dict(os.environ)
    env.pop("PARTYSENSE_DSN", None)
    process = subprocess.Popen(args, cwd=workdir, env=env, stdin=subprocess.DEVNULL)
    running = Running("partysense", process, 0, log_path)

    def listening() -> bool:
        running.port = reported_port(log_path.read_text("utf-8", "replace")) or 0
        return bool(running.port)
    try:
        _wait(listening, 60, "partysense-live to say its port", process)
        _wait(lambda: _healthy(running.port), 60, "partysense-live", process)
    except RuntimeError:
        running.stop()
        raise
    return running


def add_tree_options(parser: argparse.ArgumentParser) -> None:
    """--tree, --json and --keep-logs, as a one-daemon bench takes them."""
    parser.add_argument("--tree", type=Path,
                        help="run partysense-live from this checkout's .venv/bin/twistd "
                             "(the before side of a comparison; default: this tree's)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep-logs", type=Path,
                        help="write the daemon's logs here (default: a temp dir, removed)")


def resolve_tree(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``args.twistd``: --tree's .venv/bin/twistd (an error if it has none), or None
    (this interpreter's, start_partysense's default)."""
    args.twistd = None
    if args.tree is not None:
        args.tree = args.tree.resolve()
        args.twistd = str(args.tree / ".venv" / "bin" / "twistd")
        if not Path(args.twistd).exists():
            parser.error(f"--tree: no {args.twistd}")


def node_checkout() -> Path:
    """The seed service with its node_modules, installed once into a cache."""
    package = (SEED_NODE / "package.json").read_bytes() + (SEED_NODE / "main.js").read_bytes()
    target = NODE_CACHE / f"seed-node-{hashlib.sha256(package).hexdigest()[:12]}"
    if not (target / "node_modules" / "pg").is_dir():
        scratch = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        for name in ("main.js", "package.json"):
            shutil.copy(SEED_NODE / name, scratch / name)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=scratch, check=True, stdout=subprocess.DEVNULL, timeout=300)
        shutil.rmtree(target, ignore_errors=True)
        scratch.rename(target)
    return target


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None \
        and (SEED_NODE / "main.js").is_file()


def _start_on_free_port(name: str, args: list[str], cwd: Path, dsn: str, workdir: Path,
                        port_variable: str | None = None) -> Running:
    """A service that reads the database from PG* variables and cannot say which
    port it got: given a free one (on ``--port``, or in ``port_variable``)."""
    port = free_port()
    log_path = workdir / f"{name}-{port}.log"
    env = dict(os.environ, **libpq_environment(dsn))
    if port_variable:
        env[port_variable] = str(port)
    else:
        args = [*args, "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
    running = Running(name, process, port, log_path)
    try:
        _wait(lambda: _port_open(port), 30, f"the {name} service", process)
    except RuntimeError:
        running.stop()
        raise
    return running


def start_node(dsn: str, workdir: Path) -> Running:
    # It logs every message, as the original did.
    return _start_on_free_port("node", ["node", "--unhandled-rejections=warn", "main.js"],
                               node_checkout(), dsn, workdir, port_variable="PORT")


def start_asyncio(dsn: str, workdir: Path) -> Running:
    return _start_on_free_port("asyncio", [sys.executable, "-m", "bench.asyncio_bridge"],
                               CHECKOUT, dsn, workdir)


def asyncio_available() -> bool:
    """The asyncio reference's libraries: pip install -e '.[bench]' (or '.[test]')."""
    return all(importlib.util.find_spec(name) for name in ("asyncpg", "websockets"))
