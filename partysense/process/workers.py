"""``--workers N``: N processes serve one port, to use every core.

    twistd partysense-live --workers 2             the parent: no clients of its own
    InOrder                       stops its children one at a time, from the bottom up
    ├── EmbeddedPostgresService   only when no database is named: started once, here
    ├── WorkersService            the listening socket, and N children kept alive
    │     child i: python -m partysense.process.workerproc PARENT_PID -- twistd -n partysense-live
    │              --port systemd:domain=INET:index=0 ...   (the socket as fd 3)
    └── DemoPartyService          with --demo: one simulated party, here

The parent opens the listening socket and hands it to every child as fd 3,
the way systemd's socket activation does, so a child is an ordinary
``twistd partysense-live`` that adopts the port (``reactor.adoptStreamPort``
behind Twisted's ``systemd:`` endpoint; partysense/process/workerproc.py starts
it). The kernel gives each connection to one of the accepting children; each
child has its own single LISTEN connection. A child that dies is restarted
with backoff; the socket stays open meanwhile, so connections wait in its
queue instead of being refused.
SIGTERM to the parent stops the children (SIGTERM, then SIGKILL after
``grace`` seconds), and a child whose parent dies gets SIGTERM from the
kernel (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import random
import re
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python import usage

from partysense.db import dsn as dsnlib
from partysense.process.ordered import InOrder

log = Logger()

# The socket's number in every child: the first one systemd would pass.
CHILD_FD = 3
# A worker that stayed up this long is healthy again: its next death restarts at once.
HEALTHY_AFTER = 10.0


# -- the listening socket -----------------------------------------------------

def _endpoint_fields(description: str) -> list[str]:
    """``tcp:18854:interface=\\:\\:1`` -> ["tcp", "18854", "interface=::1"]."""
    return [field.replace("\\:", ":") for field in re.split(r"(?<!\\):", description)]


def listening_address(description: str) -> tuple[socket.AddressFamily, str, int, int]:
    """(family, interface, port, backlog) of a ``tcp:`` endpoint; UsageError otherwise.

    Only plain TCP can be shared this way: TLS would have to be set up in
    every child (terminate it in front of the workers instead).
    """
    kind, *rest = _endpoint_fields(description)
    if kind not in ("tcp", "tcp6"):
        raise usage.UsageError(
            f"--workers needs a tcp: port (tcp:18854:interface=...), not {description!r}")
    positional = [field for field in rest if "=" not in field]
    named = dict(field.split("=", 1) for field in rest if "=" in field)
    port_text = named.pop("port", positional[0] if positional else "")
    interface = named.pop("interface", "::" if kind == "tcp6" else "")
    backlog_text = named.pop("backlog", "1024")
    if named or len(positional) > 1 or not port_text.isdigit() or not backlog_text.isdigit():
        raise usage.UsageError(f"--workers cannot share the port {description!r}")
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    return family, interface, int(port_text), int(backlog_text)


def open_listening_socket(description: str) -> socket.socket:
    family, interface, port, backlog = listening_address(description)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


# -- what a child runs --------------------------------------------------------

def child_arguments(options: usage.Options) -> list[str]:
    """The child's ``partysense-live`` options: the parent's own, minus what it keeps.

    Rebuilt from the option tables, so an option added to tap.Options reaches
    the workers without this module knowing about it.
    """
    kept_by_parent = {"port", "dsn", "data-dir", "workers", "demo", "no-demo", "demo-rate"}
    arguments = []
    for name, _short, default, *_rest in getattr(options, "optParameters", []):
        value = options[name]
        if name in kept_by_parent or value is None or value == default:
            continue
        arguments += [f"--{name}", str(value)]
    for name, *_rest in getattr(options, "optFlags", []):
        if name not in kept_by_parent and options[name]:
            arguments.append(f"--{name}")
    return arguments


def admin_port_for(description: str, number: int) -> str:
    """Worker ``number``'s --admin-port: the given tcp: port plus ``number`` - 1.

    Each worker is a process of its own, with its own clients and figures, so
    each answers /metrics and /healthz on its own port (9854, 9855, ...); port
    0 stays 0 (each worker gets a free one and logs it).
    """
    kind, _, rest = description.partition(":")
    port, sep, tail = rest.partition(":")
    if kind not in ("tcp", "tcp6") or not port.isdigit():
        raise ValueError("with --workers, --admin-port must be a tcp: port (a port per "
                         f"worker counts up from it), not {description!r}")
    if int(port) == 0:
        return description
    return f"{kind}:{int(port) + number - 1}{sep}{tail}"


def for_worker(arguments: list[str], number: int) -> list[str]:
    """The child's arguments with its own --admin-port."""
    arguments = list(arguments)
    for index, argument in enumerate(arguments[:-1]):
        if argument == "--admin-port":
            arguments[index + 1] = admin_port_for(arguments[index + 1], number)
    return arguments


def child_command(family: socket.AddressFamily, arguments: list[str]) -> list[str]:
    domain = "INET6" if family == socket.AF_INET6 else "INET"
    twistd = ["-n", "--pidfile=", "partysense-live",
              "--port", f"systemd:domain={domain}:index=0", "--no-demo", *arguments]
    return [sys.executable, "-m", "partysense.process.workerproc", str(os.getpid()), "--", *twistd]


# -- the supervisor -----------------------------------------------------------

# A child's log line starts with its own timestamp; ours says the same.
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\S+ ")

class _Worker(protocol.ProcessProtocol):
    """One child: relays its log lines and reports its end."""

    def __init__(self, number: int, on_ended: Callable[[_Worker, Any], None]) -> None:
        self.number = number
        self._on_ended = on_ended
        self._partial = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.started_at = 0.0
        self.pid: int | None = None

    def outReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            text = _TIMESTAMP.sub("", line.decode("utf-8", "replace"), count=1)
            log.info("worker {worker}: {line}", worker=self.number, line=text)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if self._partial:
            self.outReceived(b"\n")
        self.ended.callback(None)
        self._on_ended(self, reason)


class WorkersService(service.Service):
    """Owns the listening socket and keeps ``count`` children running on it."""

    def __init__(self, count: int, port: str, arguments: list[str],
                 dsn: dsnlib.DSNSource, reactor: Any,
                 grace: float = 4.0) -> None:
        self.count = count
        self.port = port
        self.arguments = arguments
        self._dsn = dsn
        self._reactor = reactor
        self._grace = grace
        self._socket: socket.socket | None = None
        self._family = socket.AF_INET
        self.workers: dict[int, _Worker] = {}
        self._attempts: dict[int, int] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._backoff = backoffPolicy(initialDelay=0.5, maxDelay=10.0, factor=2.0,
                                      jitter=random.random)
        self._resolved_dsn: str | None = None
        self.restarts = 0

    def privilegedStartService(self) -> None:
        # Before twistd drops privileges (--uid): the port may be below 1024.
        self._family = listening_address(self.port)[0]
        self._socket = open_listening_socket(self.port)
        super().privilegedStartService()

    def startService(self) -> None:
        if self._socket is None:
            self.privilegedStartService()
        super().startService()
        assert self._socket is not None
        log.info("Serving {port} (port {bound}) with {count} worker processes.",
                 port=self.port, bound=self._socket.getsockname()[1], count=self.count)
        d = dsnlib.when_known(self._dsn)
        d.addCallback(self._spawn_all)
        d.addErrback(lambda failure: log.failure("Workers not started", failure))

    def _spawn_all(self, dsn: str) -> None:
        self._resolved_dsn = dsn
        for number in range(1, self.count + 1):
            if self.running:
                self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        assert self._socket is not None and self._resolved_dsn is not None
        worker = _Worker(number, self._ended)
        env = dict(os.environ)
        # The DSN goes by environment, not argv: `ps` shows argv to everyone.
        env[dsnlib.DSN_ENVIRONMENT_VARIABLE] = self._resolved_dsn
        env["PARTYSENSE_WORKER"] = str(number)
        command = child_command(self._family, for_worker(self.arguments, number))
        self._reactor.spawnProcess(
            worker, command[0], command, env=env, path=os.getcwd(),
            childFDs={0: "w", 1: "r", 2: "r", CHILD_FD: self._socket.fileno()})
        worker.started_at = self._reactor.seconds()
        worker.pid = worker.transport.pid if worker.transport is not None else None
        self.workers[number] = worker
        log.info("Worker {worker} started (pid {pid}).", worker=number, pid=worker.pid)

    def _ended(self, worker: _Worker, reason: Any) -> None:
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        if not self.running:
            return
        uptime = self._reactor.seconds() - worker.started_at
        attempt = 1 if uptime >= HEALTHY_AFTER else self._attempts.get(worker.number, 0) + 1
        self._attempts[worker.number] = attempt
        delay = 0.0 if attempt == 1 else self._backoff(attempt - 1)
        self.restarts += 1
        log.warn("Worker {worker} (pid {pid}) exited ({why}) after {uptime:.1f} s; "
                 "restarting it in {delay:.1f} s.", worker=worker.number,
                 pid=worker.pid, why=reason.getErrorMessage(),
                 uptime=uptime, delay=delay)
        self._restarts[worker.number] = self._reactor.callLater(delay, self._spawn,
                                                                worker.number)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        workers = list(self.workers.values())
        for worker in workers:
            _signal(worker, "TERM")
        kill = self._reactor.callLater(self._grace, self._kill, workers)
        done = defer.gatherResults([worker.ended for worker in workers])

        def finished(_: Any) -> None:
            if kill.active():
                kill.cancel()
            if self._socket is not None:
                self._socket.close()
                self._socket = None

        return done.addCallback(finished)

    @staticmethod
    def _kill(workers: list[_Worker]) -> None:
        for worker in workers:
            if not worker.ended.called:
                log.warn("Worker {worker} ignored SIGTERM; killing it.", worker=worker.number)
                _signal(worker, "KILL")


def _signal(worker: _Worker, name: str) -> None:
    try:
        if worker.transport is not None:
            worker.transport.signalProcess(name)
    except error.ProcessExitedAlready:
        pass


def make_supervisor(options: usage.Options, reactor: Any) -> service.MultiService:
    """The parent's service tree for ``--workers N`` (N > 1)."""
    from partysense.db.demo import DemoPartyService
    from partysense.db.embedded import database_for

    top = InOrder()
    dsn, _ = database_for(options["dsn"], options["data-dir"], top, reactor,
                          wal=options["source"] == "wal")
    WorkersService(options["workers"], options["port"], child_arguments(options), dsn,
                   reactor).setServiceParent(top)
    if options["run-demo"]:
        DemoPartyService(dsn, options["demo-rate"], reactor).setServiceParent(top)
    return top

