"""Every question the daemon asks of the change log ``partysense_change``.

The triggers (sql/install.sql) write each vote change there and notify it;
the log is what lets the daemon (after an outage) and a v2 client (after a
reconnect) get back exactly what it missed. Snapshot and replay run in one
REPEATABLE READ transaction, so the cursor and the rows come from the same
snapshot. Because ``seq`` follows commit order (docs/exactness.md), "max(seq)
visible" is exactly the last change that the snapshot's tallies include, and
"seq > cursor" is exactly what followed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from partysense.core.change import BadChange, Change, parse_change

log = Logger()

REPEATABLE_READ = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

BOUNDS_QUERY = "SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM partysense_change"
# The newest seq committed (0 for an empty log): one statement, no transaction
# around it (a seed subscription's floor, partysense/reads/floors.py).
LOG_END_QUERY = "SELECT coalesce(max(seq), 0) FROM partysense_change"

# Changes after %(after)s, oldest first: of every event when %(every)s, else
# of %(events)s. The payload is rebuilt by the very function the trigger used
# (partysense_notified_payload, which also shortens it to fit pg_notify's
# 8000 bytes), so a change read from the log is, byte for byte, the one that
# was notified (as long as the names have not been edited since).
REPLAY_QUERY = """
    SELECT partysense_notified_payload(c.seq, c.op, c.vote_id, c.event_id, e.title,
                                       c.track_id, m.name, m.artist, c.up, c.prev_up,
                                       c.committed_at)
    FROM partysense_change c
    LEFT JOIN event_event e ON e.id = c.event_id
    LEFT JOIN music_view m ON m.id = c.track_id
    WHERE c.seq > %(after)s AND (%(every)s OR c.event_id = ANY(%(events)s))
    ORDER BY c.seq
    LIMIT %(limit)s
"""

TALLY_QUERY = """
    SELECT v.track_id, m.name, m.artist,
           count(*) FILTER (WHERE v.is_positive),
           count(*) FILTER (WHERE NOT v.is_positive)
    FROM event_vote v LEFT JOIN music_view m ON m.id = v.track_id
    WHERE v.event_id = %s
    GROUP BY v.track_id, m.name, m.artist
    ORDER BY v.track_id
"""

# In WAL mode (sql/wal.sql) the tallies are the relay's, written with the log
# rows they count: event_vote may already hold votes the log has not caught up
# with, so it cannot be the snapshot's (docs/exactness.md §8).
WAL_TALLY_QUERY = """
    SELECT t.track_id, m.name, m.artist, t.up, t.down
    FROM partysense_tally t LEFT JOIN music_view m ON m.id = t.track_id
    WHERE t.event_id = %s AND (t.up <> 0 OR t.down <> 0)
    ORDER BY t.track_id
"""

TITLE_QUERY = "SELECT title FROM event_event WHERE id = %s"

# Trimmed in batches, oldest first, so that one pass never holds a
# connection for long, by partysense_trim() (sql/install.sql): it runs as its
# owner, so the daemon's role needs no DELETE on the log. The newest change is
# never deleted: a v2 snapshot's cursor is max(seq), and an empty log would
# make every cursor look too old to resume from.
TRIM_QUERY = "SELECT partysense_trim(%(keep)s, %(batch)s)"
TRIM_BATCH = 5000

# A client this far behind gets a fresh snapshot instead of a replay.
MAX_REPLAY = 10000


def replay_params(after: int, events: Iterable[int] | None, limit: int) -> dict[str, Any]:
    """REPLAY_QUERY's parameters: the changes of ``events`` (None: all) after ``after``."""
    return {"after": after, "every": events is None, "events": sorted(events or ()),
            "limit": limit}


def parse_rows(rows: list[tuple[str]]) -> list[Change]:
    """REPLAY_QUERY's rows as changes; a row that does not parse is logged and skipped."""
    changes = []
    for (payload,) in rows:
        try:
            changes.append(parse_change(payload))
        except BadChange as error:
            # Our own function made it: an install.sql from another release?
            log.error("A replayed change does not parse ({why}): {payload!r}",
                      why=error, payload=payload[:200])
    return changes


@dataclass
class Snapshot:
    cursor: int
    title: str | None = None
    tracks: list[dict[str, Any]] = field(default_factory=list)

    def message(self, event_id: int | None, request_id: Any, reset: bool = False) -> dict:
        body: dict[str, Any] = {"type": "snapshot", "event": event_id, "cursor": self.cursor}
        if event_id is None:
            body = {"type": "subscribed", "event": "ALL", "cursor": self.cursor}
        else:
            body["title"] = self.title
            body["tracks"] = self.tracks
        if request_id is not None:
            body["id"] = request_id
        if reset:
            body["reset"] = True
        return body


@dataclass
class Replay:
    """Changes after a cursor, or ``snapshot`` when the log cannot provide them.

    ``newest``: the log's newest seq when they were read; the changes are
    all of the event's up to it (None: not said).
    """

    changes: list[Change]
    snapshot: Snapshot | None = None
    newest: int | None = None


@defer.inlineCallbacks
def _tallies(cursor: Any, event_id: int, newest: int, tally_query: str) -> Any:
    yield cursor.execute(TITLE_QUERY, (event_id,))
    row = cursor.fetchone()
    yield cursor.execute(tally_query, (event_id,))
    tracks = [
        {"tid": tid, "track": name, "artist": artist, "up": up, "down": down}
        for tid, name, artist, up, down in cursor.fetchall()
    ]
    return Snapshot(cursor=newest, title=row[0] if row else None, tracks=tracks)


@defer.inlineCallbacks
def take_snapshot(cursor: Any, event_id: int | None, tally_query: str = TALLY_QUERY) -> Any:
    """txpostgres interaction: the event's tallies and the cursor they are valid at.

    For the firehose (``event_id`` None) only the cursor.
    """
    yield cursor.execute(REPEATABLE_READ)
    yield cursor.execute(BOUNDS_QUERY)
    _, newest = cursor.fetchone()
    return (yield _fresh(cursor, event_id, newest, tally_query))


@defer.inlineCallbacks
def replay_since(cursor: Any, event_id: int | None, since: int,
                 tally_query: str = TALLY_QUERY) -> Any:
    """txpostgres interaction: the changes after ``since``, or a fresh snapshot.

    A snapshot comes back when the log no longer reaches back to ``since``
    (trimmed by retention), when ``since`` is ahead of the log (another
    database?), or when the client is too far behind for a replay.
    """
    yield cursor.execute(REPEATABLE_READ)
    yield cursor.execute(BOUNDS_QUERY)
    oldest, newest = cursor.fetchone()
    trimmed = oldest > since + 1
    if since > newest or (trimmed and newest > since):
        return Replay([], (yield _fresh(cursor, event_id, newest, tally_query)))
    events = None if event_id is None else [event_id]
    yield cursor.execute(REPLAY_QUERY, replay_params(since, events, MAX_REPLAY + 1))
    rows = cursor.fetchall()
    if len(rows) > MAX_REPLAY:
        return Replay([], (yield _fresh(cursor, event_id, newest, tally_query)))
    return Replay(parse_rows(rows), newest=newest)


def _fresh(cursor: Any, event_id: int | None, newest: int, tally_query: str) -> Any:
    if event_id is None:
        return defer.succeed(Snapshot(cursor=newest))
    return _tallies(cursor, event_id, newest, tally_query)


# Votes cast (inserts) per minute in one event over the last 30 minutes, the
# current minute last: always exactly PULSE_MINUTES rows, and the cursor (the
# log's newest seq in the same statement's snapshot) that the counts include,
# so a page adds only the changes after it. The window's first seq (one step
# down the committed_at index; committed_at follows seq, both are set under
# the commit lock) lets the planner read only this event's rows through
# (event_id, seq) when that is cheaper than every event's last 30 minutes.
# The bounds are written out, not joined from a CTE: an expression of now()
# is an index condition, a joined value was a filter over the whole index
# (EXPLAIN, 200,000 changes: 128 ms before, 0.7 ms now).
PULSE_MINUTES = 30
PULSE_QUERY = """
    WITH first AS (
        SELECT coalesce((SELECT seq FROM partysense_change
                         WHERE committed_at >= date_trunc('minute', now()) - interval '29 minutes'
                         ORDER BY committed_at LIMIT 1), 9223372036854775807) AS seq
    ), counted AS (
        SELECT date_trunc('minute', c.committed_at) AS minute, count(*) AS votes
        FROM partysense_change c
        WHERE c.event_id = %(event)s AND c.seq >= (SELECT seq FROM first)
          AND c.committed_at >= date_trunc('minute', now()) - interval '29 minutes'
          AND c.op = 'insert'
        GROUP BY 1
    )
    SELECT extract(epoch FROM m.minute)::bigint, coalesce(counted.votes, 0),
           (SELECT coalesce(max(seq), 0) FROM partysense_change),
           extract(epoch FROM now())::float8
    FROM generate_series(date_trunc('minute', now()) - interval '29 minutes',
                         date_trunc('minute', now()), interval '1 minute') AS m(minute)
    LEFT JOIN counted ON counted.minute = m.minute
    ORDER BY m.minute
"""


@dataclass(frozen=True)
class Pulse:
    """Votes per minute (``votes[i]`` in the minute starting ``start + 60 i``),
    counted up to ``cursor``, read at ``now`` (epoch seconds, database clock)."""

    start: int
    votes: list[int]
    cursor: int
    now: float


def pulse_params(event_id: int) -> dict[str, Any]:
    return {"event": event_id}


def parse_pulse(rows: list[tuple[Any, ...]]) -> Pulse:
    """PULSE_QUERY's rows as a Pulse."""
    return Pulse(start=int(rows[0][0]), votes=[int(row[1]) for row in rows],
                 cursor=int(rows[0][2]), now=float(rows[0][3]))
