"""Presence, the SQL (sql/install.sql, partysense_presence_report): two daemons'
counts add up, a daemon's rows go when it stops reporting an event or its
report expires, and a role without the grant can neither write nor read them."""

from __future__ import annotations

import time
import uuid

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

from harness.daemon import wait_for
from partysense.db import sqlfiles
from partysense.db.presence import REPORT_QUERY
from partysense.db.sqlfiles import execute_autocommit
from tests.support import Party

pytestmark = pytest.mark.database


def report(party: Party, daemon: uuid.UUID, counts: dict[int, int],
           lifetime: float = 60.0) -> dict[int, int]:
    events = sorted(counts)
    rows = party.query(REPORT_QUERY, (str(daemon), events, [counts[e] for e in events],
                                      lifetime))
    return {int(event): int(total) for event, total in rows}


def rows(party: Party) -> set[tuple[str, int, int]]:
    return {(str(d), e, w) for d, e, w in
            party.query("SELECT daemon, event_id, watchers FROM partysense_presence")}


def test_two_daemons_add_up_and_each_keeps_only_its_own_events(party: Party) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert report(party, a, {1: 3, 2: 5}) == {1: 3, 2: 5}
    # b sees a's counts for the events it has too, and only those.
    assert report(party, b, {1: 4, 3: 1}) == {1: 7, 3: 1}
    # a's event 2 emptied: its row goes; its event 1 now counts b's too.
    assert report(party, a, {1: 2}) == {1: 6}
    assert rows(party) == {(str(a), 1, 2), (str(b), 1, 4), (str(b), 3, 1)}
    # Nonsense from a buggy caller is ignored, not stored.
    assert report(party, b, {1: 0, 3: -4}) == {}
    assert rows(party) == {(str(a), 1, 2)}
    # The report of "none" (a clean stop) removes all of a daemon's rows.
    assert report(party, a, {}) == {}
    assert rows(party) == set()


def test_an_expired_report_stops_counting_and_is_collected(party: Party) -> None:
    dead, alive = uuid.uuid4(), uuid.uuid4()
    report(party, dead, {9: 10}, lifetime=1.0)  # then it is killed: no goodbye
    assert report(party, alive, {9: 1}) == {9: 11}
    started = time.monotonic()
    wait_for(lambda: report(party, alive, {9: 1}) == {9: 1}, 15,
             "the dead daemon's count to expire")
    assert time.monotonic() - started < 10
    assert rows(party) == {(str(alive), 9, 1)}  # and its row is gone


@pytest.fixture
def stranger(admin_dsn: str, db_dsn: str) -> psycopg2.extensions.connection:
    """A role that may connect and use the schema, with no grant of ours."""
    name = f"ps_{uuid.uuid4().hex[:10]}"
    database = parse_dsn(db_dsn)["dbname"]
    execute_autocommit(admin_dsn, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(name), sql.Literal(name)).as_string(psycopg2.connect(admin_dsn)))
    execute_autocommit(db_dsn, sql.SQL("GRANT CONNECT ON DATABASE {} TO {}; "
                                       "GRANT USAGE ON SCHEMA public TO {}").format(
        sql.Identifier(database), sql.Identifier(name), sql.Identifier(name)).as_string(
            psycopg2.connect(db_dsn)))
    params = parse_dsn(db_dsn)
    params.update(user=name, password=name)
    connection = psycopg2.connect(make_dsn(**params))
    connection.autocommit = True
    yield connection
    connection.close()
    from tests.conftest import drop_database
    drop_database(admin_dsn, database)
    execute_autocommit(admin_dsn, sql.SQL("DROP ROLE IF EXISTS {}").format(
        sql.Identifier(name)).as_string(psycopg2.connect(admin_dsn)))


def test_a_role_without_grants_cannot_fake_or_read_presence(
        stranger: psycopg2.extensions.connection, party: Party) -> None:
    attempts = [
        ("INSERT INTO partysense_presence (daemon, event_id, watchers, expires) "
         "VALUES (%s, 1, 1000, now() + interval '1 hour')", (str(uuid.uuid4()),)),
        ("UPDATE partysense_presence SET watchers = 1000", None),
        ("DELETE FROM partysense_presence", None),
        ("SELECT * FROM partysense_presence", None),
        (REPORT_QUERY, (str(uuid.uuid4()), [1], [1000], 60.0)),
    ]
    for statement, params in attempts:
        with stranger.cursor() as cursor, pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cursor.execute(statement, params)
    assert rows(party) == set()


def test_installing_again_keeps_the_counts(party: Party) -> None:
    daemon = uuid.uuid4()
    report(party, daemon, {5: 2})
    sqlfiles.install(party.dsn)  # every upgrade runs it again
    assert report(party, uuid.uuid4(), {5: 1}) == {5: 3}
