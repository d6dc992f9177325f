"""Rotating the signing keys: `partysense-db key`, and a listener that follows a
rotation without losing a vote or a read (sql/install.sql, partysense/db/keys.py)."""

from __future__ import annotations

import psycopg2
import pytest
import pytest_twisted

from harness.faults import event_with_track
from partysense.cli import dbcli
from partysense.db.listener import ListenerService
from tests.support import Notifications, eventually
from tests.test_source import notify

pytestmark = pytest.mark.database


def query(dsn: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple]:
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def key_command(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert dbcli.main(["key", *args]) == 0
    return capsys.readouterr().out


def test_rotate_makes_a_key_that_signs_later_and_retire_removes_the_old_ones_after(
        db_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    [(first,)] = query(db_dsn, "SELECT id FROM partysense_key")
    said = key_command(capsys, "rotate", "--dsn", db_dsn, "--delay", "5s")
    second = first + 1
    assert f"key {second} made" in said
    listed = key_command(capsys, "list", "--dsn", db_dsn).splitlines()
    assert [line.split("\t")[:2] for line in listed] == [
        [str(first), "signing"], [str(second), "not yet signing"]]
    # Never sooner than 30 s, whatever is asked: daemons read the keys every 15 s.
    [(delay,)] = query(db_dsn, "SELECT extract(epoch FROM activates - created) "
                               "FROM partysense_key WHERE id = %s", (second,))
    assert 29 < delay < 31
    assert "0 old keys retired" in key_command(capsys, "retire", "--dsn", db_dsn)

    activate(db_dsn, second)  # as if 30 s had passed
    assert "1 old keys retired" in key_command(capsys, "retire", "--dsn", db_dsn)
    assert query(db_dsn, "SELECT id FROM partysense_key") == [(second,)]


def test_a_role_that_did_not_install_cannot_rotate_read_or_sign(db_dsn: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    query(db_dsn, "DROP ROLE IF EXISTS ps_keyless; CREATE ROLE ps_keyless")
    try:
        query(db_dsn, "SET ROLE ps_keyless; SELECT 1")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            query(db_dsn, "SET ROLE ps_keyless; SELECT partysense_rotate_key(60)")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            query(db_dsn, "SET ROLE ps_keyless; SELECT secret FROM partysense_key")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):  # it would sign a forgery
            query(db_dsn, "SET ROLE ps_keyless; SELECT partysense_sign('{}')")
    finally:
        query(db_dsn, "RESET ROLE; DROP ROLE ps_keyless")


@pytest_twisted.ensureDeferred
async def test_the_listener_follows_a_rotation_without_a_read(
        db_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    from twisted.internet import reactor

    event_id, track_id = event_with_track(db_dsn)
    delivered: list[int] = []
    service = ListenerService(db_dsn, reactor, key_refresh=0.1)
    service.observe(lambda channel, change: delivered.append(change.seq))
    service.listen(f"event_{event_id}")
    service.startService()
    listening = Notifications(db_dsn, f"event_{event_id}")
    try:
        await service.whenConnected()
        await eventually(lambda: len(service.channels) == 1, "the LISTEN")
        reads = service.reads
        vote(db_dsn, event_id, track_id)
        await eventually(lambda: len(delivered) == 1, "the vote signed with the first key")
        listening.next()
        old_text = listening.last_text

        key_command(capsys, "rotate", "--dsn", db_dsn)
        [(new_key,)] = query(db_dsn, "SELECT max(id) FROM partysense_key")
        await eventually(lambda: new_key in (service._keys.keys or {}), "the new key read")
        activate(db_dsn, new_key)
        vote(db_dsn, event_id, track_id)
        await eventually(lambda: len(delivered) == 2, "the vote signed with the new key")
        listening.next()
        assert listening.last_text.startswith(f"ps1 {new_key} ")
        assert service.reads == reads, "a rotation costs no read of the log"

        key_command(capsys, "retire", "--dsn", db_dsn)
        await eventually(lambda: list(service._keys.keys or {}) == [new_key],
                         "the old key forgotten")
        bad = service.bad_notifications
        notify(db_dsn, f"event_{event_id}", old_text)
        await eventually(lambda: service.bad_notifications == bad + 1,
                         "a text signed with a retired key, refused")
        assert len(delivered) == 2
    finally:
        listening.close()
        await service.stopService()


def vote(dsn: str, event_id: int, track_id: int) -> None:
    query(dsn, "INSERT INTO event_vote (event_id, track_id, is_positive) VALUES (%s, %s, true)",
          (event_id, track_id))


def activate(dsn: str, key_id: int) -> None:
    """Make a rotated key sign now, as if its minute had passed."""
    query(dsn, "UPDATE partysense_key SET activates = now() - interval '1 second' "
               "WHERE id = %s", (key_id,))
