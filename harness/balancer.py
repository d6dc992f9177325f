"""HAProxy in front of several daemons, run with the shipped configuration.

The configuration is ``contrib/haproxy-partysense-live.cfg`` itself, with
only what cannot be the same on a test machine replaced (:func:`derive`):
the ``bind`` line (TLS on :443 becomes plain HTTP on a socket this process
opened) and the ``server`` lines (one per daemon, keeping the shipped check
options). A stats socket is added so that the test can ask HAProxy what it
thinks of each server. Everything else, timeouts, retries, health checks,
is the file operators copy.

The listening socket is opened here, on port 0, and handed to HAProxy as an
inherited file descriptor (``bind fd@N``): no other process can take the
port between choosing and binding it.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from harness.daemon import Daemon, wait_for

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "contrib" / "haproxy-partysense-live.cfg"

# "server NAME ADDRESS OPTIONS...", possibly commented out (a second example).
_SERVER = re.compile(r"^(\s*)#?\s*server\s+\S+\s+\S+(.*)$")
_BIND = re.compile(r"^(\s*)bind\s")


def haproxy_path() -> str | None:
    for candidate in ("/usr/sbin/haproxy", shutil.which("haproxy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def derive(shipped: str, servers: Sequence[tuple[str, int]], stats_socket: str,
           listen_fd: int) -> str:
    """The shipped configuration with its ``bind`` line on an inherited
    listening socket (plain HTTP),
    its ``server`` lines replaced by ``servers`` (name, port on 127.0.0.1)
    with the first shipped server's options, and a stats socket; every other
    line as shipped. Fails if the file no longer has the lines it replaces."""
    out: list[str] = []
    binds = 0
    server_options: str | None = None
    for line in shipped.splitlines():
        if _BIND.match(line):
            binds += 1
            out.append(f"{_BIND.match(line).group(1)}bind fd@{listen_fd}")  # type: ignore[union-attr]
            continue
        server = _SERVER.match(line)
        if server:
            if server_options is None:  # the first one (not commented out) is the template
                server_options = server.group(2)
                indent = server.group(1)
                out.extend(f"{indent}server {name} 127.0.0.1:{port}{server_options}"
                           for name, port in servers)
            continue
        out.append(line)
        if line.strip() == "global":
            out.append(f"    stats socket {stats_socket} mode 600 level admin")
    if binds != 1 or server_options is None:
        raise ValueError(f"{SHIPPED_CONFIG.name}: expected one bind line and a server line, "
                         f"found {binds} bind line(s), server line: {server_options is not None}")
    return "\n".join(out) + "\n"


class Balancer:
    """``haproxy -db -f <derived config>`` in front of ``servers`` (name, port).

    ``port`` is where clients connect (127.0.0.1); :meth:`states` is
    HAProxy's own view of each server ("UP", "DOWN", "UP 1/2", ...).
    """

    backend = "partysense_live"

    def __init__(self, workdir: Path, servers: Sequence[tuple[str, int]]) -> None:
        executable = haproxy_path()
        if executable is None:
            raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
        self.servers = list(servers)
        # Unix socket paths are short (107 bytes): not under pytest's tmp tree.
        self._socket_dir = tempfile.mkdtemp(prefix="ps-haproxy-")
        self.stats_socket = os.path.join(self._socket_dir, "stats.sock")
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = int(self._listener.getsockname()[1])
        self.config_path = workdir / "haproxy.cfg"
        self.config_path.write_text(derive(SHIPPED_CONFIG.read_text("utf-8"), self.servers,
                                           self.stats_socket, self._listener.fileno()),
                                    "utf-8")
        self.log_path = workdir / "haproxy.log"
        # -c checks the inherited socket too: it gets it as well.
        checked = subprocess.run([executable, "-c", "-f", str(self.config_path)],
                                 capture_output=True, text=True,
                                 pass_fds=(self._listener.fileno(),))
        if checked.returncode != 0:
            self._listener.close()
            raise AssertionError(f"haproxy -c refused the derived configuration:\n"
                                 f"{checked.stdout}{checked.stderr}")
        self.warnings = checked.stdout + checked.stderr
        with open(self.log_path, "ab") as log:
            # -db: stay in the foreground.
            self.process = subprocess.Popen(
                [executable, "-db", "-f", str(self.config_path)], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                pass_fds=(self._listener.fileno(),))
        self._listener.close()  # HAProxy has its own copy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def ask(self, command: str) -> str:
        """One command on HAProxy's runtime API (the stats socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(self.stats_socket)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def states(self) -> dict[str, str]:
        """HAProxy's view of each server of the backend: its ``status`` column."""
        try:
            text = self.ask("show stat")
        except OSError:
            return {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows
                if row["pxname"] == self.backend and row["svname"] not in ("BACKEND", "FRONTEND")}

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> None:
        """Until HAProxy reports ``name`` exactly in ``state`` (e.g. "UP", "DOWN")."""
        self._check_running()
        wait_for(lambda: self._check_running() or self.states().get(name) == state, timeout,
                 f"HAProxy to see {name} {state} (it says {self.states()})")

    def wait_all_up(self, timeout: float = 30.0) -> None:
        for name, _ in self.servers:
            self.wait_state(name, "UP", timeout)

    def _check_running(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"haproxy exited with {self.process.returncode}:\n{self.log()}")
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a hard stop: tunnels are cut
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> Balancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()



class Cluster:
    """``count`` daemons on one database behind one :class:`Balancer`.

    The daemons are named live1, live2, ... in HAProxy, in list order. They
    run with ``--trusted-proxies 1``, as contrib/ says a daemon behind
    HAProxy does.
    """

    def __init__(self, dsn: str, workdir: Path, count: int = 3,
                 extra: Sequence[str] = ()) -> None:
        self.daemons = [Daemon(dsn, workdir, "--no-demo", "--trusted-proxies", "1", *extra)
                        for _ in range(count)]
        self.names = [f"live{n}" for n in range(1, count + 1)]
        self.balancer: Balancer | None = None
        try:
            for daemon in self.daemons:  # started side by side: a few seconds saved
                daemon.spawn()
            for daemon in self.daemons:
                daemon.wait_listening()
                daemon.wait_healthy()
            self.balancer = Balancer(workdir, list(zip(self.names, (d.port for d in self.daemons),
                                                       strict=True)))
            self.balancer.wait_all_up()
        except BaseException:
            self.close()
            raise

    @property
    def lb(self) -> Balancer:
        assert self.balancer is not None
        return self.balancer

    def clients(self) -> list[int]:
        """WebSocket clients of each daemon, from its own /healthz (0 if it does not answer)."""
        counts = []
        for daemon in self.daemons:
            answer = daemon.health()
            counts.append(int(answer[1].get("clients", 0)) if answer else 0)
        return counts

    def kill(self, index: int) -> None:
        """kill -9: no close frame, no goodbye; the kernel resets its connections."""
        process = self.daemons[index].process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def restart(self, index: int) -> None:
        """SIGTERM (clients hear 1001), then start again on the same port, and
        wait until HAProxy sends clients there again."""
        daemon = self.daemons[index]
        port = daemon.port
        daemon.stop()
        daemon.start()
        assert daemon.port == port
        self.lb.wait_state(self.names[index], "UP")

    def close(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for daemon in self.daemons:
            daemon.stop()
