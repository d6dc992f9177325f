"""The database side (sql/install.sql), heard the way the daemon hears it: LISTEN.

Every test LISTENs with a plain psycopg2 connection on a fresh database that
has the stand-in schema and the triggers, changes votes as Django does, and
reads the notifications PostgreSQL really sends.
"""

from __future__ import annotations

import json
import select
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from partysense.db.changelog import REPLAY_QUERY, replay_params
from tests.support import Party

pytestmark = pytest.mark.database

AWKWARD = [
    'Friday "Fever"',
    "back\\slash \\n not a newline",
    "line\nbreak",
    "tab\there",
    "emoji 🎉🪩 and ünïcödé",
    "<script>alert('x')</script>",
    "control \x01\x1f chars",
    "",
]


class Notifications:
    """A LISTENing psycopg2 connection; ``next()`` waits for one notification."""

    def __init__(self, dsn: str, *channels: str) -> None:
        self.connection = psycopg2.connect(dsn)
        self.connection.autocommit = True
        with self.connection.cursor() as cursor:
            for channel in channels:
                cursor.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any], str]:
        """(channel, parsed payload, raw payload) of the next notification."""
        deadline = time.monotonic() + timeout
        while not self.connection.notifies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no notification within {timeout} s")
            select.select([self.connection], [], [], remaining)
            self.connection.poll()
        notify = self.connection.notifies.pop(0)
        return notify.channel, json.loads(notify.payload), notify.payload

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def listen(db_dsn: str) -> Iterator[Any]:
    opened: list[Notifications] = []

    def open_(*channels: str) -> Notifications:
        opened.append(Notifications(db_dsn, *channels))
        return opened[-1]

    yield open_
    for notifications in opened:
        notifications.close()


def test_awkward_names_arrive_exact(party: Party, listen: Any) -> None:
    heard = listen("firehose")
    for index, name in enumerate(AWKWARD):
        event_id = party.event(name[:70])
        track_id = party.track(name, f"{name} artist {index}")
        vote_id = party.vote(event_id, track_id, up=True)
        # strict JSON (json.loads rejects raw control characters), and exact text
        _, payload, raw = heard.next()
        assert payload == {
            "eid": event_id, "event": name[:70], "track": name,
            "artist": f"{name} artist {index}", "tid": track_id, "up": True,
            "op": "insert", "vote": vote_id, "prev": None, "seq": payload["seq"],
            "truncated": False, "ts": payload["ts"],
        }
        assert isinstance(payload["ts"], float)
        assert "\n" not in raw and "\t" not in raw


def test_null_track_name_stays_null(party: Party, listen: Any) -> None:
    heard = listen("firehose")
    event_id = party.event()
    track_id = party.track(None, "Nameless")
    party.vote(event_id, track_id)
    _, payload, _ = heard.next()
    assert payload["track"] is None
    assert (payload["artist"], payload["tid"], payload["eid"]) == ("Nameless", track_id, event_id)


def test_track_without_artist_row_keeps_the_payload(party: Party, listen: Any) -> None:
    """The real schema's music_view may give a NULL artist; the rest survives."""
    heard = listen("firehose")
    event_id = party.event()
    track_id = party.track("Lonely", "Gone")
    # The artist vanishes (the FK is deferred, so drop it for the test).
    party.query("ALTER TABLE music_track DROP CONSTRAINT music_track_artist_id_fkey")
    party.query("DELETE FROM music_artist WHERE name = 'Gone'")
    party.vote(event_id, track_id)
    _, payload, _ = heard.next()
    assert (payload["track"], payload["artist"], payload["tid"]) == ("Lonely", None, track_id)


def widen_names(party: Party) -> None:
    """Let the stand-in hold names longer than Django's limits (a schema may)."""
    party.query("DROP VIEW music_view")
    party.query("ALTER TABLE music_track ALTER COLUMN name TYPE text")
    party.query("ALTER TABLE music_artist ALTER COLUMN name TYPE text")
    party.query("ALTER TABLE event_event ALTER COLUMN title TYPE text")
    party.query("""CREATE VIEW music_view AS
        SELECT music_track.id, music_track.name, music_artist.name AS artist
        FROM music_track LEFT JOIN music_artist ON music_artist.id = music_track.artist_id""")


@pytest.mark.parametrize("filler", ["x", "🎉", "\x01"])
def test_oversized_payload_is_truncated_and_the_vote_commits(
        party: Party, listen: Any, filler: str) -> None:
    widen_names(party)
    heard = listen("firehose")
    event_id = party.event("T" + filler * 3000)
    track_id = party.track("N" + filler * 3000, "A" + filler * 3000)
    vote_id = party.vote(event_id, track_id, up=False)  # must not raise
    assert party.query("SELECT is_positive FROM event_vote WHERE id = %s", (vote_id,)) == [
        (False,)]
    live = []
    for op in ("insert", "update"):
        _, payload, raw = heard.next()
        assert payload["op"] == op and payload["vote"] == vote_id
        assert payload["truncated"] is True
        assert len(raw.encode("utf-8")) < 8000
        assert payload["event"] == ("T" + filler * 3000)[:300]
        assert payload["track"] == ("N" + filler * 3000)[:300]
        assert payload["artist"] == ("A" + filler * 3000)[:300]
        live.append(raw)
    # What the daemon reads back from the log is what was notified, shortened alike.
    replayed = [row[0] for row in party.query(REPLAY_QUERY, replay_params(0, [event_id], 10))]
    assert replayed == live


def test_payload_just_under_the_limit_is_not_truncated(party: Party, listen: Any) -> None:
    widen_names(party)
    heard = listen("firehose")
    event_id = party.event("e")
    track_id = party.track("t" * 7000, "a")
    party.vote(event_id, track_id)
    _, payload, raw = heard.next()
    assert payload["truncated"] is False and payload["track"] == "t" * 7000
    assert len(raw) < 7900
    # The one rule (partysense_notified_payload) reads it back whole, as notified.
    assert party.query(REPLAY_QUERY, replay_params(0, [event_id], 10)) == [(raw,)]


def test_django_insert_then_update(party: Party, listen: Any) -> None:
    event_id = party.event()
    track_id = party.track()
    heard = listen(f"event_{event_id}")
    vote_id = party.vote(event_id, track_id, up=False)
    _, inserted, _ = heard.next()
    _, updated, _ = heard.next()
    assert (inserted["op"], inserted["up"], inserted["prev"]) == ("insert", True, None)
    assert (updated["op"], updated["up"], updated["prev"]) == ("update", False, True)
    assert inserted["vote"] == updated["vote"] == vote_id
    assert inserted["seq"] < updated["seq"]


def test_insert_and_update_in_one_transaction(party: Party, listen: Any) -> None:
    """Django in ATOMIC_REQUESTS mode: both in one commit, still two exact changes."""
    event_id = party.event()
    track_id = party.track()
    heard = listen("firehose")
    with psycopg2.connect(party.dsn) as connection, connection.cursor() as cursor:
        cursor.execute("INSERT INTO event_vote (event_id, track_id) VALUES (%s, %s) "
                       "RETURNING id", (event_id, track_id))
        vote_id = cursor.fetchone()[0]
        cursor.execute("UPDATE event_vote SET is_positive = false WHERE id = %s", (vote_id,))
    connection.close()
    changes = [heard.next()[1] for _ in range(2)]
    assert [(c["op"], c["up"], c["prev"]) for c in changes] == [
        ("insert", True, None), ("update", False, True)]


def test_update_that_changes_nothing_is_silent(party: Party, listen: Any) -> None:
    event_id = party.event()
    track_id = party.track()
    vote_id = party.vote(event_id, track_id, up=True)
    heard = listen("firehose", f"event_{event_id}")
    party.query("UPDATE event_vote SET is_positive = true WHERE id = %s", (vote_id,))
    party.query("UPDATE event_vote SET is_positive = is_positive, user_id = 99 WHERE id = %s",
                (vote_id,))
    party.query("UPDATE event_vote SET event_id = event_id WHERE id = %s", (vote_id,))
    # A sentinel: notifications arrive in commit order, so if the no-op
    # updates had notified, they would come first.
    sentinel = party.vote(event_id, track_id)
    channel, payload, _ = heard.next()
    assert (payload["vote"], payload["op"]) == (sentinel, "insert")


def test_delete(party: Party, listen: Any) -> None:
    event_id = party.event()
    track_id = party.track()
    vote_id = party.vote(event_id, track_id, up=False)
    heard = listen(f"event_{event_id}")
    party.query("DELETE FROM event_vote WHERE id = %s", (vote_id,))
    _, payload, _ = heard.next()
    assert (payload["op"], payload["vote"], payload["up"], payload["prev"]) == (
        "delete", vote_id, False, False)
    assert (payload["eid"], payload["tid"]) == (event_id, track_id)


def test_vote_moved_to_another_event(party: Party, listen: Any) -> None:
    old_event, new_event = party.event("Old"), party.event("New")
    track_id = party.track()
    vote_id = party.vote(old_event, track_id, up=False)
    old, new, everything = (listen(f"event_{old_event}"), listen(f"event_{new_event}"),
                            listen("firehose"))
    party.query("UPDATE event_vote SET event_id = %s WHERE id = %s", (new_event, vote_id))
    _, removed, _ = old.next()
    _, added, _ = new.next()
    assert (removed["op"], removed["eid"], removed["up"], removed["prev"]) == (
        "delete", old_event, False, False)
    assert (added["op"], added["eid"], added["up"], added["prev"]) == (
        "insert", new_event, False, None)
    assert [everything.next()[1] for _ in range(2)] == [removed, added]


def test_vote_moved_to_another_track(party: Party, listen: Any) -> None:
    event_id = party.event()
    first, second = party.track("First"), party.track("Second")
    vote_id = party.vote(event_id, first, up=True)
    heard = listen(f"event_{event_id}")
    party.query("UPDATE event_vote SET track_id = %s WHERE id = %s", (second, vote_id))
    changes = [heard.next()[1] for _ in range(2)]
    assert [(c["op"], c["tid"]) for c in changes] == [("delete", first), ("insert", second)]


def test_every_change_on_both_channels(party: Party, listen: Any) -> None:
    event_id, other_event = party.event(), party.event()
    track_id = party.track()
    heard = listen(f"event_{event_id}", "firehose")
    party.vote(event_id, track_id, up=False)  # an insert and an update
    party.vote(other_event, track_id, up=False)
    received = [heard.next()[:2] for _ in range(6)]
    per_channel: dict[str, list[int]] = {}
    for channel, payload in received:
        per_channel.setdefault(channel, []).append(payload["seq"])
    firehose_seqs = per_channel["firehose"]
    assert len(firehose_seqs) == 4
    assert per_channel[f"event_{event_id}"] == firehose_seqs[:2]
    assert f"event_{other_event}" not in per_channel


def test_seq_follows_commit_order_not_id_order(party: Party, listen: Any) -> None:
    event_id = party.event()
    track_id = party.track()
    heard = listen("firehose")
    early = psycopg2.connect(party.dsn)
    try:
        with early.cursor() as cursor:
            cursor.execute("INSERT INTO event_vote (event_id, track_id) VALUES (%s, %s) "
                           "RETURNING id", (event_id, track_id))
            first_id = cursor.fetchone()[0]
        # A second voter starts later, gets a higher id and commits first.
        second_id = party.query("INSERT INTO event_vote (event_id, track_id) VALUES (%s, %s) "
                                "RETURNING id", (event_id, track_id))[0][0]
        early.commit()
    finally:
        early.close()
    assert first_id < second_id
    one, two = heard.next()[1], heard.next()[1]
    assert (one["vote"], two["vote"]) == (second_id, first_id)
    assert one["seq"] < two["seq"]
    log = party.query("SELECT vote_id FROM partysense_change ORDER BY seq")
    assert log == [(second_id,), (first_id,)]


def test_seq_strictly_increasing_under_concurrent_voters(party: Party, listen: Any) -> None:
    event_id = party.event()
    track_id = party.track()
    heard = listen("firehose")
    voters, votes_each = 4, 25
    errors: list[BaseException] = []

    def vote_many() -> None:
        try:
            connection = psycopg2.connect(party.dsn)
            for _ in range(votes_each):
                with connection, connection.cursor() as cursor:
                    cursor.execute("INSERT INTO event_vote (event_id, track_id) VALUES (%s, %s)",
                                   (event_id, track_id))
            connection.close()
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=vote_many) for _ in range(voters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    seqs = [heard.next()[1]["seq"] for _ in range(voters * votes_each)]
    assert seqs == sorted(set(seqs))
    assert seqs == [row[0] for row in party.query("SELECT seq FROM partysense_change "
                                                  "ORDER BY seq")]


def test_catch_up_query_rebuilds_the_live_payload(party: Party, listen: Any) -> None:
    """What the listener replays after an outage is what it would have heard live."""
    heard = listen("firehose")
    event_id = party.event(AWKWARD[0])
    track_id = party.track(AWKWARD[4], AWKWARD[5])
    vote_id = party.vote(event_id, track_id, up=False)
    party.query("DELETE FROM event_vote WHERE id = %s", (vote_id,))
    live = [heard.next()[2] for _ in range(3)]
    replayed = [row[0] for row in party.query(REPLAY_QUERY, replay_params(0, None, 100))]
    assert replayed == live


def test_the_triggers_ignore_the_callers_search_path(party: Party, listen: Any) -> None:
    """A role that puts its own partysense_change (or music_view) first in the search_path
    of the voting session changes nothing: the functions fix their own."""
    heard = listen("firehose")
    event_id, track_id = party.event("Real"), party.track("Real song", "Real band")
    party.query("CREATE SCHEMA planted")
    party.query("CREATE TABLE planted.partysense_change (LIKE public.partysense_change "
                "INCLUDING ALL)")
    party.query("CREATE VIEW planted.music_view AS SELECT id, 'PLANTED'::text AS name, "
                "'PLANTED'::text AS artist FROM public.music_track")
    party.query("SET search_path = planted, public")
    try:
        party.vote(event_id, track_id)
    finally:
        party.query("RESET search_path")
    _, payload, _ = heard.next()
    assert (payload["track"], payload["artist"]) == ("Real song", "Real band")
    assert party.query("SELECT count(*) FROM planted.partysense_change") == [(0,)]
    assert party.query("SELECT count(*) FROM public.partysense_change WHERE event_id = %s",
                       (event_id,)) == [(1,)]


def test_install_drops_the_seed_triggers(party: Party) -> None:
    from partysense.db import sqlfiles

    party.query("""CREATE FUNCTION seed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('seed', 'x'); RETURN NULL; END $$""")
    for name in ("my_trigger", "firehose_trigger"):
        party.query(sql.SQL("CREATE TRIGGER {} AFTER INSERT ON event_vote FOR EACH ROW "
                            "EXECUTE FUNCTION seed_notify()").format(sql.Identifier(name)))
    sqlfiles.install(party.dsn)
    triggers = {row[0] for row in party.query(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'event_vote'::regclass "
        "AND NOT tgisinternal")}
    assert triggers == {"partysense_vote_insert", "partysense_vote_update",
                        "partysense_vote_delete", "partysense_vote_truncate"}


DJANGO_BIGINT_SCHEMA = """
CREATE TABLE music_artist (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                           name varchar(256) NOT NULL UNIQUE);
CREATE TABLE music_track (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                          artist_id bigint NOT NULL REFERENCES music_artist (id),
                          name varchar(256));
CREATE VIEW music_view AS SELECT music_track.id, music_track.name, music_artist.name AS artist
    FROM music_track JOIN music_artist ON music_artist.id = music_track.artist_id;
CREATE TABLE event_event (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                          title varchar(70) NOT NULL);
CREATE TABLE event_vote (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                         is_positive boolean NOT NULL DEFAULT true,
                         event_id bigint NOT NULL REFERENCES event_event (id),
                         track_id bigint NOT NULL REFERENCES music_track (id),
                         user_id bigint);
"""


def test_django_bigint_ids(empty_db_dsn: str) -> None:
    """Django's BigAutoField (its default since 3.2) makes bigint ids: votes still commit,
    also once the ids are past 2^31."""
    from partysense.db import sqlfiles

    with Party(empty_db_dsn) as party:
        party.query(DJANGO_BIGINT_SCHEMA)
        for table in ("event_event", "music_track", "event_vote"):
            party.query(f"ALTER TABLE {table} ALTER COLUMN id RESTART WITH 5000000000")
        sqlfiles.install(empty_db_dsn)
        heard = Notifications(empty_db_dsn, "firehose")
        try:
            event_id = party.event()
            track_id = party.track()
            vote_id = party.vote(event_id, track_id, up=False)
            party.query("DELETE FROM event_vote WHERE id = %s", (vote_id,))
            changes = [heard.next()[1] for _ in range(3)]
        finally:
            heard.close()
    assert [(c["op"], c["up"], c["prev"]) for c in changes] == [
        ("insert", True, None), ("update", False, True), ("delete", False, False)]
    assert {(c["eid"], c["tid"], c["vote"]) for c in changes} == {(event_id, track_id, vote_id)}
    assert min(event_id, track_id, vote_id) > 2**32
