"""One vote change, parsed once at the boundary, read by field everywhere inward.

The trigger (sql/install.sql, ``partysense_payload``) announces each change
as a JSON object; the listener turns each row of the change log (the same
text, rebuilt) into a :class:`Change` right where it arrives, once, and the
hub, the metrics and both dialects read its fields. (A notification is never
parsed: it is compared with the rows, partysense/db/listener.py.)
A payload that is not exactly one of our changes (not JSON, a key missing,
one too many, a key twice, a value of the wrong type) raises
:class:`BadChange` and goes no further.

The seed dialect forwards ``payload``, the bytes the database sent, byte for
byte (the old service did); everything else is built from the fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from partysense.core.errors import first_line, is_utf8

OPS = frozenset({"insert", "update", "delete"})
MAX_ID = 2**63 - 1

# Key -> the types its value may have, in the order the trigger writes them.
# "ts" came with the second release; a payload without it (an old trigger
# still installed) has no commit time.
_FIELDS: dict[str, tuple[type, ...]] = {
    "eid": (int,), "event": (str, type(None)), "track": (str, type(None)),
    "artist": (str, type(None)), "tid": (int,), "up": (bool,), "op": (str,),
    "vote": (int,), "prev": (bool, type(None)), "seq": (int,), "truncated": (bool,),
    "ts": (int, float, type(None)),
}
_REQUIRED = frozenset(_FIELDS) - {"ts"}


class BadChange(ValueError):
    """A notification payload that is not one of our changes."""


@dataclass(frozen=True, slots=True)
class Change:
    """A vote inserted, changed or deleted, as the trigger recorded it."""

    event_id: int
    seq: int
    committed_at: float | None  # epoch seconds, from the database's clock
    op: str                     # insert, update or delete
    vote_id: int
    track_id: int
    up: bool                    # the vote's direction now (for a delete: what went)
    prev: bool | None           # its direction before (None for an insert)
    event_title: str | None
    track_name: str | None
    artist: str | None
    truncated: bool             # names shortened to fit NOTIFY's 8000 bytes
    payload: bytes              # the UTF-8 text it was parsed from

    def fields(self) -> dict[str, Any]:
        """The change as the wire carries it (docs/protocol.md), keys in the trigger's order."""
        return {
            "eid": self.event_id, "event": self.event_title, "track": self.track_name,
            "artist": self.artist, "tid": self.track_id, "up": self.up, "op": self.op,
            "vote": self.vote_id, "prev": self.prev, "seq": self.seq,
            "truncated": self.truncated, "ts": self.committed_at,
        }


def parse_change(text: str) -> Change:
    """The change in a trigger's payload; BadChange says what is wrong with it."""
    try:
        body = _DECODER.decode(text)
    except (ValueError, RecursionError) as error:
        raise BadChange(f"not JSON ({first_line(error)})") from None
    if not isinstance(body, dict):
        raise BadChange("not a JSON object")
    missing = _REQUIRED - body.keys()
    if missing:
        raise BadChange(f"missing {', '.join(sorted(missing))}")
    unknown = body.keys() - _FIELDS.keys()
    if unknown:
        raise BadChange(f"unexpected {', '.join(sorted(unknown)[:5])}")
    for key, value in body.items():
        # type() is: True is an int to isinstance, and must not pass as an id.
        if type(value) not in _FIELDS[key]:
            raise BadChange(f'"{key}" is {type(value).__name__}')
        if type(value) is str and not is_utf8(value):
            raise BadChange(f'"{key}" holds a lone surrogate')
    for key in ("eid", "tid", "vote", "seq"):
        if not 1 <= body[key] <= MAX_ID:
            raise BadChange(f'"{key}" out of range')
    if body["op"] not in OPS:
        raise BadChange('"op" is not insert, update or delete')
    return Change(
        event_id=body["eid"], seq=body["seq"], committed_at=_seconds(body.get("ts")),
        op=body["op"], vote_id=body["vote"], track_id=body["tid"], up=body["up"],
        prev=body["prev"], event_title=body["event"], track_name=body["track"],
        artist=body["artist"], truncated=body["truncated"], payload=text.encode("utf-8"),
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) != len(pairs):
        raise ValueError("a key appears twice")
    return body


# Made once: json.loads(text, object_pairs_hook=...) builds a decoder per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _seconds(value: int | float | None) -> float | None:
    return None if value is None else float(value)
