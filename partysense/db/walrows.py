"""What the WAL relay writes: a streamed row change as the change log's rows.

The listen mode's triggers log each vote's insert, update and delete (and a
TRUNCATE's votes as their deletes); :func:`log_rows` makes the same rows of
the changes pgoutput streams (partysense/db/waldecoder.py), and
:func:`write_arguments` packs a batch of them for ``partysense_relay_write``
(sql/wal.sql), which partysense/db/walrelay.py calls once per batch.
"""

from __future__ import annotations

import datetime
from typing import Any

from partysense.db.waldecoder import RowChange
from partysense.db.walstream import format_lsn

# One log row: op, vote, event, track, up, prev.
Row = tuple[str, int, int, int, bool, bool | None]

WRITE = ("SELECT partysense_relay_write(%s::pg_lsn[], %s::timestamptz[], %s::text[], "
         "%s::bigint[], %s::bigint[], %s::bigint[], %s::boolean[], %s::boolean[])")


def log_rows(change: RowChange) -> list[Row]:
    """A streamed row change as the listen mode's triggers would have logged it."""
    table, old, new = change.relation.name, change.old, change.new
    if table == "partysense_truncated" and change.op == "insert" and new is not None:
        up = new["up"] == "t"  # a vote TRUNCATE removed: announced as its delete
        return [("delete", _id(new["vote_id"]), _id(new["event_id"]), _id(new["track_id"]),
                 up, up)]
    if table != "event_vote" or change.op == "truncate":
        return []  # a truncate's votes come as partysense_truncated rows
    if change.op == "insert" and new is not None:
        return [("insert", *_vote(new), None)]
    if change.op == "delete" and old is not None:
        vote = _vote(old)
        return [("delete", *vote, vote[3])]
    assert old is not None and new is not None
    before, after = _vote(old), _vote(new)
    if before[1:3] != after[1:3]:  # moved to another event or track
        return [("delete", *before, before[3]), ("insert", *after, None)]
    if before[3] != after[3]:
        return [("update", *after, before[3])]
    return []  # another column (user_id): no change of any tally


def _id(value: Any) -> int:
    return int(value)


def _vote(row: dict[str, Any]) -> tuple[int, int, int, bool]:
    return (_id(row["id"]), _id(row["event_id"]), _id(row["track_id"]),
            row["is_positive"] == "t")


_BOOLEAN = {True: "t", False: "f", None: "NULL"}


def write_arguments(batch: list[tuple[int, float, list[Row]]]) -> list[str]:
    """partysense_relay_write's eight arrays, each as one array literal (``{a,b}``).

    psycopg2 would send a list as ``ARRAY[...]`` with one constant (and one
    cast) per element, eight per change, which PostgreSQL parses and plans at
    every batch; one literal per column is parsed once. Nothing here needs
    quoting but the timestamps, quoted whole: an LSN is ``16/B374D848``, an op
    a word, ids integers, ``up``/``prev`` t, f or NULL. A commit time is the
    text psycopg2 sends for the same datetime (its isoformat()).
    """
    lsns: list[str] = []
    times: list[str] = []
    ops: list[str] = []
    votes: list[str] = []
    events: list[str] = []
    tracks: list[str] = []
    ups: list[str] = []
    prevs: list[str] = []
    for end_lsn, commit_time, rows in batch:
        if not rows:
            continue
        lsn = format_lsn(end_lsn)
        when = '"' + datetime.datetime.fromtimestamp(commit_time, datetime.UTC).isoformat() + '"'
        for op, vote, event, track, up, prev in rows:
            lsns.append(lsn)
            times.append(when)
            ops.append(op)
            votes.append(str(vote))
            events.append(str(event))
            tracks.append(str(track))
            ups.append(_BOOLEAN[up])
            prevs.append(_BOOLEAN[prev])
    return ["{" + ",".join(column) + "}"
            for column in (lsns, times, ops, votes, events, tracks, ups, prevs)]
