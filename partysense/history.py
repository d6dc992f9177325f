"""What the database says about the past: tallies as of a cursor, and replay.

Both run in one REPEATABLE READ transaction, so the cursor and the rows
come from the same snapshot. Because ``seq`` follows commit order
(docs/exactness.md), "max(seq) visible" is exactly the last change that the
snapshot's tallies include, and "seq > cursor" is exactly what followed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

REPEATABLE_READ = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

CURSOR_QUERY = "SELECT coalesce(max(seq), 0), coalesce(min(seq), 0) FROM partysense_change"

TALLY_QUERY = """
    SELECT v.track_id, m.name, m.artist,
           count(*) FILTER (WHERE v.is_positive),
           count(*) FILTER (WHERE NOT v.is_positive)
    FROM event_vote v LEFT JOIN music_view m ON m.id = v.track_id
    WHERE v.event_id = %s
    GROUP BY v.track_id, m.name, m.artist
    ORDER BY v.track_id
"""

TITLE_QUERY = "SELECT title FROM event_event WHERE id = %s"

# %(event)s NULL means every event (the firehose).
REPLAY_QUERY = """
    SELECT c.seq,
           partysense_payload(c.seq, c.op, c.vote_id, c.event_id, e.title, c.track_id,
                              m.name, m.artist, c.up, c.prev_up, false, c.committed_at)
    FROM partysense_change c
    LEFT JOIN event_event e ON e.id = c.event_id
    LEFT JOIN music_view m ON m.id = c.track_id
    WHERE c.seq > %(cursor)s AND (%(event)s::bigint IS NULL OR c.event_id = %(event)s)
    ORDER BY c.seq
    LIMIT %(limit)s
"""

# A client this far behind gets a fresh snapshot instead of a replay.
MAX_REPLAY = 10000


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
    """Changes after a cursor, or ``snapshot`` when the log cannot provide them."""

    changes: list[tuple[int, str]]
    snapshot: Snapshot | None = None


@defer.inlineCallbacks
def _tallies(cursor: Any, event_id: int, newest: int) -> Any:
    yield cursor.execute(TITLE_QUERY, (event_id,))
    row = cursor.fetchone()
    yield cursor.execute(TALLY_QUERY, (event_id,))
    tracks = [
        {"tid": tid, "track": name, "artist": artist, "up": up, "down": down}
        for tid, name, artist, up, down in cursor.fetchall()
    ]
    return Snapshot(cursor=newest, title=row[0] if row else None, tracks=tracks)


@defer.inlineCallbacks
def take_snapshot(cursor: Any, event_id: int | None) -> Any:
    """txpostgres interaction: the event's tallies and the cursor they are valid at.

    For the firehose (``event_id`` None) only the cursor.
    """
    yield cursor.execute(REPEATABLE_READ)
    yield cursor.execute(CURSOR_QUERY)
    newest, _ = cursor.fetchone()
    if event_id is None:
        return Snapshot(cursor=newest)
    return (yield _tallies(cursor, event_id, newest))


@defer.inlineCallbacks
def replay_since(cursor: Any, event_id: int | None, since: int) -> Any:
    """txpostgres interaction: the changes after ``since``, or a fresh snapshot.

    A snapshot comes back when the log no longer reaches back to ``since``
    (trimmed by retention), when ``since`` is ahead of the log (another
    database?), or when the client is too far behind for a replay.
    """
    yield cursor.execute(REPEATABLE_READ)
    yield cursor.execute(CURSOR_QUERY)
    newest, oldest = cursor.fetchone()
    trimmed = oldest > since + 1
    if since > newest or (trimmed and newest > since):
        return Replay([], (yield _fresh(cursor, event_id, newest)))
    yield cursor.execute(
        REPLAY_QUERY, {"cursor": since, "event": event_id, "limit": MAX_REPLAY + 1})
    changes = cursor.fetchall()
    if len(changes) > MAX_REPLAY:
        return Replay([], (yield _fresh(cursor, event_id, newest)))
    return Replay([(seq, payload) for seq, payload in changes])


def _fresh(cursor: Any, event_id: int | None, newest: int) -> Any:
    if event_id is None:
        return defer.succeed(Snapshot(cursor=newest))
    return _tallies(cursor, event_id, newest)
