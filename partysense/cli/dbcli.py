"""``partysense-db``: the database side, from the command line.

    partysense-db install --dsn DSN [--demo-schema] [--source listen|wal]
    partysense-db tail --event ID|ALL [--dsn DSN | --url ws://host:18854/]
    partysense-db key rotate|retire|list --dsn DSN
"""

from __future__ import annotations

import argparse
import sys

from partysense.cli import keycli, tail, tokencli
from partysense.db import dsn as dsnlib
from partysense.db import sqlfiles, walsetup
from partysense.db.errors import QueryRefused


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="partysense-db", description="Manage the database side of partysense-live.")
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser(
        "install", help="install or upgrade the change log, notify functions and triggers "
                        "(idempotent)")
    install.add_argument("--dsn",
                         help=f"the database (default: ${dsnlib.DSN_ENVIRONMENT_VARIABLE})")
    install.add_argument("--demo-schema", action="store_true",
                         help="also create the stand-in PartySense tables (not on the real DB)")
    install.add_argument("--source", choices=SOURCES, default="listen",
                         help="listen (default): triggers log and NOTIFY each vote change; "
                              "wal: no triggers, a publication for logical decoding "
                              "(checks wal_level and the slot settings first)")
    tail.add_parser(commands)
    tokencli.add_parser(commands)
    keycli.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "tail":
        return tail.run(args)
    if args.command == "token":
        return tokencli.run(args)
    try:
        dsn = dsnlib.dsn_from(args.dsn)
    except dsnlib.DSNError as error:
        print(f"partysense-db: --dsn: {error}", file=sys.stderr)
        return 2
    if dsn is None:
        print(f"partysense-db: no database: give --dsn or set ${dsnlib.DSN_ENVIRONMENT_VARIABLE}",
              file=sys.stderr)
        return 2
    if args.command == "install":
        return install(dsn, args.demo_schema, args.source == "wal")
    if args.command == "key":
        return keycli.run(args, dsn, sys.stdout, sys.stderr)
    return 2


# An unreachable host should fail in seconds, not after the kernel's minutes.
CONNECT_TIMEOUT_SECONDS = "10"


SOURCES = ("listen", "wal")


def install(dsn: str, demo_schema: bool, wal: bool = False) -> int:
    dsn_with_timeout = dsnlib.with_defaults(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        # WAL mode is checked before anything changes: a database whose
        # settings cannot stream keeps its listen mode (and its triggers).
        settings = walsetup.read_settings(dsn_with_timeout) if wal else None
        if settings is not None and settings.problems():
            print(f"partysense-db: {dsnlib.redact(dsn)} cannot serve --source wal yet, "
                  "nothing was changed:", file=sys.stderr)
            for problem in settings.problems():
                print(f"  - {problem}", file=sys.stderr)
            return 1
        scripts = sqlfiles.install_or_refused(dsn_with_timeout, demo_schema=demo_schema,
                                              wal=wal)
    except QueryRefused as error:
        print(f"partysense-db: install failed on {dsnlib.redact(dsn)}: {error}",
              file=sys.stderr)
        return 1
    print(f"partysense-db: installed {', '.join(scripts)} on {dsnlib.redact(dsn)}")
    for note in settings.notes() if settings is not None else []:
        print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
