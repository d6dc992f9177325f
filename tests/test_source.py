"""The change source as a seam (partysense/core/interfaces.py, partysense/db/source.py),
and what the LISTEN source believes (partysense/db/listener.py): a notification signed
with a key of partysense_key, with no read; without the keys, only the log's rows."""

from __future__ import annotations

import secrets
import uuid

import psycopg2
import pytest
import pytest_twisted
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet import task

from harness.faults import event_with_track
from partysense.core.signature import sign
from partysense.db.listener import ListenerService
from partysense.db.source import KINDS, LISTEN, WAL, make_source
from partysense.db.sqlfiles import execute_autocommit
from tests.support import Notifications, Party, eventually


@pytest.mark.logic
def test_the_listen_source_is_the_listener_service() -> None:
    source = make_source(LISTEN, "postgresql:///nowhere", task.Clock(), grace=0.0)
    assert isinstance(source, ListenerService)
    assert KINDS == (LISTEN, WAL)


@pytest.mark.logic
def test_an_unknown_source_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'kafka'"):
        make_source("kafka", "postgresql:///nowhere", task.Clock(), grace=0.0)


def notify(dsn: str, channel: str, text: str) -> None:
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", (channel, text))
    finally:
        connection.close()


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_a_signed_notification_is_believed_without_a_read_and_nothing_else_is(
        db_dsn: str, party: Party) -> None:
    from twisted.internet import reactor

    event_id, track_id = event_with_track(db_dsn)
    other = party.event("Elsewhere")
    delivered: list[tuple[str, int, str]] = []
    service = ListenerService(db_dsn, reactor)
    batches: list[int] = []  # how many changes were handed on when each batch ended
    service.after_batch(lambda: batches.append(len(delivered)))
    listening_to(service, delivered, event_id, other)
    try:
        await service.whenConnected()
        await eventually(lambda: len(service.channels) == 2, "both LISTENs")
        assert service.signed
        reads = service.reads
        listening = Notifications(db_dsn, f"event_{event_id}")
        party.vote(event_id, track_id)
        await eventually(lambda: len(delivered) == 1, "the vote")
        [(_, seq, genuine)] = delivered
        listening.next()
        signed = listening.last_text
        [(key_id, key)] = listening.keys().items()
        listening.close()
        assert service.reads == reads, "a signed notification is believed without a read"
        assert 1 in batches, "the batch that brought the vote ended after it was handed on"

        # The genuine envelope again on its event's channel: already handed on.
        notify(db_dsn, f"event_{event_id}", signed)
        # On another event's channel; the bare payload; a signature that does not
        # match; a key nobody has; no payload at all.
        for text in (signed, genuine, sign(key_id, key, genuine).replace(" {", " {\n", 1),
                     sign(key_id + 7, b"k" * 32, genuine), f"ps1 {key_id} " + "0" * 64):
            notify(db_dsn, f"event_{other}", text)
        await eventually(lambda: service.bad_notifications == 5, "the five bad ones counted")
        assert [s for _, s, _ in delivered] == [seq], "only the real change, once"
        assert service.reads == reads, "no bad notification costs a query"
    finally:
        await service.stopService()


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_without_the_keys_a_notification_is_a_doorbell_checked_against_the_log(
        db_dsn: str, party: Party) -> None:
    """A role not granted SELECT on partysense_key: every notification rings a read,
    and what it said is checked against the log's rows, as before signatures."""
    from twisted.internet import reactor

    event_id, track_id = event_with_track(db_dsn)
    other = party.event("Elsewhere")
    role = KeylessRole(db_dsn)
    delivered: list[tuple[str, int, str]] = []
    service = listening_to(ListenerService(role.dsn, reactor), delivered, event_id, other)
    try:
        await service.whenConnected()
        await eventually(lambda: len(service.channels) == 2, "both LISTENs")
        assert not service.signed
        party.vote(event_id, track_id)
        await eventually(lambda: len(delivered) == 1, "the vote")
        [(_, _, genuine)] = delivered

        # The log's row, announced again on its event's channel: nothing wrong.
        reads = service.reads
        notify(db_dsn, f"event_{event_id}", genuine)
        await eventually(lambda: service.reads > reads, "a read rung by it")
        assert service.bad_notifications == 0

        # The same text on another event's channel, then text that is no change at all.
        notify(db_dsn, f"event_{other}", genuine)
        await eventually(lambda: service.bad_notifications == 1, "the misplaced one counted")
        notify(db_dsn, f"event_{other}", '{"eid": 1, "seq": 1}')
        await eventually(lambda: service.bad_notifications == 2, "the forged one counted")
        assert [seq for _, seq, _ in delivered] == [delivered[0][1]], "only the real change"
    finally:
        await service.stopService()
        role.drop()


class KeylessRole:
    """A login role that may read the change log but not the signing keys."""

    def __init__(self, db_dsn: str) -> None:
        self.name = f"ps_{uuid.uuid4().hex[:10]}"
        password = secrets.token_hex(16)
        self._db_dsn = db_dsn
        params = parse_dsn(db_dsn)
        params.update(user=self.name, password=password)
        self.dsn = make_dsn(**params)
        database = params["dbname"]
        execute_autocommit(db_dsn, sql.SQL(
            "CREATE ROLE {role} LOGIN PASSWORD {password}; "
            "GRANT CONNECT ON DATABASE {database} TO {role}; "
            "GRANT SELECT ON event_event, music_view, partysense_change TO {role}; "
            "GRANT EXECUTE ON FUNCTION partysense_notified_payload TO {role}").format(
                role=sql.Identifier(self.name), password=sql.Literal(password),
                database=sql.Identifier(database)))

    def drop(self) -> None:
        execute_autocommit(self._db_dsn, sql.SQL("DROP OWNED BY {role}; DROP ROLE {role}").format(
            role=sql.Identifier(self.name)))


def listening_to(service: ListenerService, delivered: list[tuple[str, int, str]],
                 *events: int) -> ListenerService:
    """``service`` started, LISTENing to ``events``, noting what it hands on."""
    service.observe(lambda channel, change: delivered.append(
        (channel, change.seq, change.payload.decode("utf-8"))))
    for event_id in events:
        service.listen(f"event_{event_id}")
    service.startService()
    return service
