"""``partysense-db key``: the keys the trigger signs notifications with.

    partysense-db key rotate --dsn DSN [--delay 60s]   a new key, signing a minute from now
    partysense-db key retire --dsn DSN                 forget the keys before the signing one
    partysense-db key list --dsn DSN                   ids and dates (never the secrets)

Every daemon reads the keys every 15 s, so a key made with ``rotate`` is
known everywhere before it signs; the old one stays valid until ``retire``.
Rotate when a key may have leaked (a copy of the database, a backup, the
daemon's password), or on a schedule (docs/operations.md, "Signing keys").
"""

from __future__ import annotations

import argparse
from typing import IO, Any

from partysense.cli.tokencli import duration
from partysense.db import dsn as dsnlib
from partysense.db import keyadmin
from partysense.db.errors import QueryRefused


def add_parser(commands: Any) -> None:
    key = commands.add_parser("key", help="rotate the keys notifications are signed with")
    actions = key.add_subparsers(dest="action", required=True)
    rotate = actions.add_parser("rotate", help="make a new signing key (signing after --delay)")
    rotate.add_argument("--delay", type=duration, default=duration("60s"),
                        help="when it starts signing: at least 30s, twice the daemons' "
                             "15 s between reads of the keys (default: 60s)")
    actions.add_parser("retire", help="forget the keys older than the one signing now")
    actions.add_parser("list", help="the keys' ids and dates, never their secrets")
    for action in actions.choices.values():
        action.add_argument("--dsn", help="the database, as the role that installed it "
                                          f"(default: ${dsnlib.DSN_ENVIRONMENT_VARIABLE})")


def run(args: argparse.Namespace, dsn: str, out: IO[str], err: IO[str]) -> int:
    shown = dsnlib.redact(dsn)
    try:
        if args.action == "rotate":
            key_id, activates = keyadmin.rotate(dsn, args.delay)
            print(f"partysense-db: key {key_id} made on {shown}; it signs from "
                  f"{activates.isoformat(timespec='seconds')}. Retire the old ones a "
                  "minute or more after that: partysense-db key retire", file=out)
        elif args.action == "retire":
            print(f"partysense-db: {keyadmin.retire(dsn)} old keys retired on {shown}",
                  file=out)
        else:
            for key_id, activates, created, active, signing in keyadmin.listed(dsn):
                state = "signing" if signing else "valid" if active else "not yet signing"
                print(f"{key_id}\t{state}\tsigns from {activates.isoformat(timespec='seconds')}"
                      f"\tmade {created.isoformat(timespec='seconds')}", file=out)
    except QueryRefused as error:
        print(f"partysense-db: key {args.action} failed on {shown}: {error}", file=err)
        return 1
    return 0
