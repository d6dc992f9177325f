"""``partysense-db tail``: watch vote changes from a terminal, one line each.

    partysense-db tail --event 1 --dsn DSN          LISTEN on the database itself
    partysense-db tail --event ALL                  every event ($PARTYSENSE_DSN)
    partysense-db tail --event 1 --url ws://host:18854/   what a running daemon sends

A line looks like::

    06:12:01.245 seq 1234 event 1 "Friday" update up->down "One More Time" by "Daft Punk"
        (track 7, vote 42)                    (on one line)

The time is the commit's (the payload's ``ts``), in local time. Names are
printed as JSON strings, so a newline or a quote in a track name stays on
its line. ``--json`` prints the JSON as received instead.
Through a daemon the tail speaks partysense.v2 and starts with the event's
tallies; straight from the database it needs no daemon at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from partysense.cli.tailformat import ALL, describe, printable
from partysense.core.channels import channel_for
from partysense.core.signature import payload_of
from partysense.db import dsn as dsnlib
from partysense.db.errors import QueryRefused
from partysense.db.notifications import payloads


def add_parser(commands: Any) -> None:
    """Add ``tail`` to partysense-db's subcommands."""
    tail = commands.add_parser(
        "tail", help="print one line per vote change, from the database or a running daemon")
    tail.add_argument("--event", default=ALL, type=parse_event,
                      help="an event id, or ALL for every event (default: ALL)")
    tail.add_argument(
        "--dsn", help=f"the database to LISTEN to (default: ${dsnlib.DSN_ENVIRONMENT_VARIABLE})")
    tail.add_argument("--url", help="watch a running daemon instead: ws://host:18854/ or wss://…")
    tail.add_argument("--cafile",
                      help="with a wss:// --url, trust this PEM certificate (a self-signed one)")
    tail.add_argument("--json", action="store_true", help="print the raw JSON payloads")


def parse_event(text: str) -> int | None:
    """``ALL`` is None (the firehose); anything else must be a positive integer."""
    if text.upper() == ALL:
        return None
    if not text.isdigit() or int(text) <= 0 or int(text) >= 2**63:
        raise argparse.ArgumentTypeError(f"not an event id or ALL: {text!r}")
    return int(text)


def run(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    if args.url:
        if args.dsn:
            print("partysense-db tail: give --url or --dsn, not both", file=err)
            return 2
        return tail_daemon(args.url, args.event, args.json, args.cafile, out, err)
    try:
        dsn = dsnlib.dsn_from(args.dsn)
    except dsnlib.DSNError as error:
        print(f"partysense-db tail: --dsn: {error}", file=err)
        return 2
    if dsn is None:
        print("partysense-db tail: no database: give --dsn, set "
              f"${dsnlib.DSN_ENVIRONMENT_VARIABLE}, or watch a daemon with --url", file=err)
        return 2
    try:
        return tail_database(dsn, args.event, args.json, out, err)
    except KeyboardInterrupt:
        return 0
    except QueryRefused as error:
        print(f"partysense-db tail: {dsnlib.redact(dsn)}: {error}", file=err)
        return 1


def tail_database(dsn: str, event_id: int | None, raw: bool, out: IO[str],
                  err: IO[str]) -> int:
    """LISTEN on the event's channel (or the firehose) and print until interrupted."""
    channel = channel_for(event_id)
    for payload in payloads(dsn, channel, application_name="partysense-db tail"):
        if payload is None:
            print(f"partysense-db tail: listening on {channel} in {dsnlib.redact(dsn)} "
                  "(Ctrl-C to stop)", file=err, flush=True)
        else:
            # The trigger's signature is not checked here: a human's view of the channel.
            _print(payload_of(payload), raw, out)
    return 0


def _print(payload: str, raw: bool, out: IO[str]) -> None:
    if raw:
        line = payload
    else:
        try:
            line = describe(json.loads(payload))
        except (ValueError, TypeError, KeyError):
            line = f"(not a vote change) {payload}"
    print(printable(line), file=out, flush=True)


def tail_daemon(url: str, event_id: int | None, raw: bool, cafile: str | None,
                out: IO[str], err: IO[str]) -> int:
    """Subscribe through a running daemon (partysense.v2) and print until it closes."""
    from twisted.internet import reactor
    from twisted.python.failure import Failure

    from partysense.cli.watch import watch

    outcome: list[int] = []

    def finish(code: Any) -> None:
        if isinstance(code, Failure):
            print(f"partysense-db tail: {code.getErrorMessage()}", file=err)
            code = 1
        outcome.append(code)
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(
        lambda: watch(url, event_id, raw, cafile, out, err).addBoth(finish))
    reactor.run()
    return outcome[0] if outcome else 0  # nothing: interrupted (Ctrl-C)
