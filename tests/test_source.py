"""The change source as a seam (partysense/core/interfaces.py, partysense/db/source.py),
and the LISTEN source's check of notifications against the log's rows, which are the only
text it parses (partysense/db/listener.py)."""

from __future__ import annotations

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import task

from harness.faults import event_with_track
from partysense.db.listener import ListenerService
from partysense.db.source import KINDS, LISTEN, make_source
from tests.support import Party, eventually


@pytest.mark.logic
def test_the_listen_source_is_the_listener_service() -> None:
    source = make_source(LISTEN, "postgresql:///nowhere", task.Clock(), grace=0.0)
    assert isinstance(source, ListenerService)
    assert KINDS == (LISTEN,)


@pytest.mark.logic
def test_an_unknown_source_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'wal'"):
        make_source("wal", "postgresql:///nowhere", task.Clock(), grace=0.0)


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
async def test_a_notification_counts_as_bad_unless_it_is_a_row_on_its_events_channel(
        db_dsn: str, party: Party) -> None:
    from twisted.internet import reactor

    event_id, track_id = event_with_track(db_dsn)
    other = party.event("Elsewhere")
    delivered: list[tuple[str, int, str]] = []
    service = ListenerService(db_dsn, reactor)
    service.observe(lambda channel, change: delivered.append(
        (channel, change.seq, change.payload.decode("utf-8"))))
    service.listen(f"event_{event_id}")
    service.listen(f"event_{other}")
    service.startService()
    try:
        await service.whenConnected()
        await eventually(lambda: len(service.channels) == 2, "both LISTENs")
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
