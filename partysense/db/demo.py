"""A simulated party, so that a newcomer sees votes move within seconds.

Guests vote the way the real Django view does: an INSERT with the default
``is_positive = true``, then an UPDATE to the real direction; now and then
a guest changes their mind or takes a vote back.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from partysense.db import dsn as dsnlib

DEMO_EVENTS = ["Saturday Night Fever", "Rooftop \"Sunset\" Session", "Office Party 🎉"]

DEMO_TRACKS = [
    ("Daft Punk", "One More Time"),
    ("Daft Punk", "Around the World"),
    ("Queen", "Don't Stop Me Now"),
    ("AC/DC", "Back in Black"),
    ("Beyoncé", "Crazy in Love"),
    ("Sigur Rós", "Hoppípolla"),
    ("The B-52's", "Love Shack"),
    ("Björk", "Army of Me"),
    ("!!!", "Me and Giuliani Down by the School Yard"),
    ("Weird \"Al\" Yankovic", "White & Nerdy"),
    ("<script>alert(1)</script>", "Markup \\ stays text"),
    ("🎧 DJ Emoji", "Tab\tand\nnewline"),
]

SEED_SQL = """
    INSERT INTO music_artist (name) VALUES (%(artist)s) ON CONFLICT (name) DO NOTHING;
    INSERT INTO music_track (artist_id, name)
        SELECT a.id, %(track)s FROM music_artist a
        WHERE a.name = %(artist)s
          AND NOT EXISTS (SELECT 1 FROM music_track t
                          WHERE t.artist_id = a.id AND t.name = %(track)s);
"""


def seed(cursor: Any) -> tuple[list[int], list[int]]:
    """Create the demo events and tracks once; return their ids."""
    for title in DEMO_EVENTS:
        cursor.execute(
            "INSERT INTO event_event (title) SELECT %(t)s "
            "WHERE NOT EXISTS (SELECT 1 FROM event_event WHERE title = %(t)s)",
            {"t": title},
        )
    for artist, track in DEMO_TRACKS:
        cursor.execute(SEED_SQL, {"artist": artist, "track": track})
    cursor.execute("SELECT id FROM event_event WHERE title = ANY(%s) ORDER BY id", (DEMO_EVENTS,))
    events = [row[0] for row in cursor.fetchall()]
    cursor.execute("SELECT id FROM music_track ORDER BY id")
    tracks = [row[0] for row in cursor.fetchall()]
    return events, tracks


def one_guest(cursor: Any, events: list[int], tracks: list[int], rng: random.Random) -> str:
    """One guest's action, as Django would run it. Returns what happened."""
    event_id = rng.choice(events)
    roll = rng.random()
    if roll < 0.08:
        cursor.execute(
            "DELETE FROM event_vote WHERE id = (SELECT id FROM event_vote WHERE event_id = %s "
            "ORDER BY random() LIMIT 1)", (event_id,))
        return "delete"
    if roll < 0.2:
        cursor.execute(
            "UPDATE event_vote SET is_positive = NOT is_positive WHERE id = (SELECT id FROM "
            "event_vote WHERE event_id = %s ORDER BY random() LIMIT 1)", (event_id,))
        return "change"
    # Popular tracks get more votes, so the ranking has a shape.
    track_id = tracks[min(int(rng.expovariate(0.35)), len(tracks) - 1)]
    cursor.execute(
        "INSERT INTO event_vote (event_id, track_id, user_id) VALUES (%s, %s, %s) RETURNING id",
        (event_id, track_id, rng.randrange(1, 500)),
    )
    vote_id = cursor.fetchone()[0]
    cursor.connection.commit()  # get_or_create commits, then save() updates
    up = rng.random() < 0.7
    cursor.execute("UPDATE event_vote SET is_positive = %s WHERE id = %s", (up, vote_id))
    return "up" if up else "down"


class DemoPartyService(Service):
    """Casts ``rate`` simulated votes a second into the database."""

    log = Logger()

    def __init__(self, dsn: dsnlib.DSNSource, rate: float, reactor: Any) -> None:
        self._dsn = dsn
        self._rate = rate
        self._reactor = reactor
        self._pool: adbapi.ConnectionPool | None = None
        self._loop: LoopingCall | None = None
        self._rng = random.Random()
        self._events: list[int] = []
        self._tracks: list[int] = []

    def startService(self) -> None:
        super().startService()
        self._start().addErrback(
            lambda f: self.log.failure("The demo party could not start", f))

    @defer.inlineCallbacks
    def _start(self) -> Any:
        dsn = yield dsnlib.when_known(self._dsn)
        if not self.running:
            return
        self._pool = adbapi.ConnectionPool(
            "psycopg2", dsn, cp_min=1, cp_max=1, cp_reconnect=True, cp_noisy=False,
            cp_reactor=self._reactor)
        self._events, self._tracks = yield self._pool.runInteraction(seed)
        self.log.info("Demo party: {count} guests' votes a second on events {events}.",
                      count=self._rate, events=self._events)
        self._loop = LoopingCall(self._vote)
        self._loop.clock = self._reactor
        self._loop.start(1.0 / self._rate, now=True)

    def _vote(self) -> defer.Deferred[Any]:
        assert self._pool is not None
        d = self._pool.runInteraction(one_guest, self._events, self._tracks, self._rng)
        # A database blip must not stop the party: log it and vote again later.
        d.addErrback(lambda f: self.log.warn("Demo vote failed: {why}",
                                             why=f.getErrorMessage().strip()))
        return d

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._pool is not None:
            self._pool.close()
        return None
