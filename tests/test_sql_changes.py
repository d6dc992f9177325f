"""Which vote changes of sql/install.sql's triggers are notified, on which
channels and in what order, heard the way the daemon hears it: LISTEN.

Every test LISTENs (the ``listen`` fixture, tests/conftest.py) with a plain
psycopg2 connection on a fresh database that has the stand-in schema and the
triggers, changes votes as Django does, and reads the notifications
PostgreSQL really sends. What a notification says is in tests/test_sql_payload.py.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
import pytest

from tests.support import Party

pytestmark = pytest.mark.database


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

