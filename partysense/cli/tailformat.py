"""One line per vote change, as ``partysense-db tail`` prints it.

Shared by the tail straight from the database (partysense/cli/tail.py) and the
one through a running daemon (partysense/cli/watch.py).
"""

from __future__ import annotations

import json
import unicodedata
from datetime import datetime
from typing import Any

ALL = "ALL"
V2_SUBPROTOCOL = "partysense.v2"


def describe(change: dict[str, Any], now: datetime | None = None) -> str:
    """One human line for a change payload (a v2 change message works too)."""
    when = datetime.fromtimestamp(change["ts"]) if change.get("ts") else (now or datetime.now())
    up = _direction(change.get("up"))
    op = change.get("op", "?")
    if op == "update":
        move = f"{_direction(change.get('prev'))}->{up}"
    else:
        move = up
    return (
        f"{when.strftime('%H:%M:%S.%f')[:-3]} seq {change.get('seq')} "
        f"event {change.get('eid')} {quoted(change.get('event'))} {op} {move} "
        f"{quoted(change.get('track'))} by {quoted(change.get('artist'))} "
        f"(track {change.get('tid')}, vote {change.get('vote')})"
    )


def _direction(up: Any) -> str:
    return "up" if up is True else "down" if up is False else "?"


def quoted(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def printable(text: str) -> str:
    """``text`` with every control or format character written as ``\\uXXXX``.

    What the tail prints comes from the database, and a NOTIFY from anyone:
    an escape sequence must not reach the terminal (nor a bidi override turn
    a line around).
    """
    return "".join(
        f"\\u{ord(char):04x}" if unicodedata.category(char)[0] == "C" else char
        for char in text)
