"""``partysense-db token``: print a signed access token for some events.

    partysense-db token --secret-file /etc/partysense-live/token.secret --event 3 --ttl 6h
    partysense-db token --secret-file ... --all --ttl 30m      every event and the firehose

The token is an HS256 JWT for a daemon started with the same
``--token-secret-file`` (and ``--token-secret-encoding``, ``--token-audience``:
``--secret-encoding base64`` and ``--audience`` here). Handy for a DJ screen or
a test; the PartySense app mints its guests' tokens itself (docs/security.md
shows the Django view).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import IO, Any

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(commands: Any) -> None:
    token = commands.add_parser("token", help="print a signed access token (HS256 JWT)")
    token.add_argument("--secret-file", required=True,
                       help="the file the daemon's --token-secret-file names")
    token.add_argument("--secret-encoding", choices=("raw", "base64"), default="raw",
                       help="as the daemon's --token-secret-encoding (default: raw)")
    token.add_argument("--audience",
                       help="the \"aud\" claim: the daemon's --token-audience, if it has one")
    which = token.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", type=positive_id, action="append",
                       help="an event the token gives access to (repeat for more)")
    which.add_argument("--all", action="store_true",
                       help="every event and the firehose")
    token.add_argument("--ttl", type=duration, default=duration("6h"),
                       help="how long it is valid: 90s, 30m, 6h, 2d (default: 6h)")


def positive_id(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"not an event id: {text!r}")
    return int(text)


def duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 90s, 30m, 6h, 2d)")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def run(args: argparse.Namespace, out: IO[str] | None = None,
        err: IO[str] | None = None) -> int:
    from partysense.dialects.tokens import mint, read_secret  # late: install needs no JWT

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        secret = read_secret(args.secret_file, args.secret_encoding)
    except ValueError as error:
        print(f"partysense-db token: {error}", file=err)
        return 2
    print(mint(secret, None if args.all else args.event, args.ttl, time.time(),
               audience=args.audience), file=out)
    return 0
