"""The listener against a real PostgreSQL, on the real reactor: re-LISTEN and
replay after a killed backend, host names connected by address, retention,
and change logs that do not continue where the listener left off.

The listener's timing logic on a ``Clock`` is in tests/test_listener_connecting.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from psycopg2.extensions import make_dsn

from harness.faults import SilentProxy, committed, event_with_track, terminate_listener
from partysense.db.listener import ListenerService
from partysense.db.queries import QueryService
from partysense.db.retention import RetentionService
from tests.support import Party, eventually

Delivered = list[tuple[str, int, str]]


def _listener(dsn: str, delivered: Delivered, **kwargs: Any) -> ListenerService:
    from twisted.internet import reactor

    service = ListenerService(dsn, reactor, **kwargs)
    service.observe(lambda channel, change: delivered.append(
        (channel, change.seq, change.payload.decode("utf-8"))))
    return service


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_when_connected_fires_once_caught_up(db_dsn: str) -> None:
    service = _listener(db_dsn, [])
    early = service.whenConnected()
    service.startService()
    try:
        await early
        assert service.connected and service.last_seq == 0
        await service.whenConnected()  # already connected: at once
    finally:
        service.stopService()


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_killed_backend_relistens_and_replays_in_commit_order(
        db_dsn: str, party: Party) -> None:
    event_id, track_id = event_with_track(db_dsn)
    other_event = party.event("Elsewhere")
    delivered: Delivered = []
    service = _listener(db_dsn, delivered, backoff=lambda attempt: 0.2)
    service.listen(f"event_{event_id}")
    service.listen("firehose")
    service.startService()
    try:
        await service.whenConnected()
        await eventually(lambda: len(service.channels) == 2, "both LISTENs")
        party.vote(event_id, track_id)
        await eventually(lambda: len(delivered) == 2, "a live change on both channels")

        held = psycopg2.connect(db_dsn)  # a low id, committed last
        with held.cursor() as cursor:
            cursor.execute("INSERT INTO event_vote (event_id, track_id, user_id) "
                           "VALUES (%s, %s, 9)", (event_id, track_id))
        assert terminate_listener(db_dsn) == 1
        party.vote(event_id, track_id, up=False)
        party.vote(other_event, track_id)
        held.commit()
        held.close()

        await eventually(lambda: service.reconnects == 1 and service.connected, "a reconnect")
        listened = await service.runQuery("SELECT pg_listening_channels()")
        assert {row[0] for row in listened} == {f"event_{event_id}", "firehose"}
        party.vote(event_id, track_id)  # live again

        expected = {
            f"event_{event_id}": [s for s, _, _ in committed(db_dsn, event_id)],
            "firehose": [s for s, _, _ in committed(db_dsn)],
        }
        total = sum(map(len, expected.values()))
        await eventually(lambda: len(delivered) >= total, "every change")
        for channel, seqs in expected.items():
            assert [seq for ch, seq, _ in delivered if ch == channel] == seqs, channel
        assert service.replayed > 0
    finally:
        service.stopService()


@pytest.mark.database
@pytest.mark.embedded_only  # through a proxy port: see test_faults.test_silent_tcp_connection
@pytest_twisted.ensureDeferred
async def test_a_host_name_is_resolved_and_connected_by_address(db_dsn: str) -> None:
    proxy = SilentProxy(db_dsn)  # a TCP door to the test database, never silenced
    dsn = make_dsn(proxy.dsn(db_dsn), host="localhost")
    service = _listener(dsn, [])
    service.startService()
    try:
        await service.whenConnected()
        rows = await service.runQuery("SELECT inet_client_addr() IS NULL")
        assert rows == [(True,)]  # the proxy reaches PostgreSQL by its socket
        assert service.connected
    finally:
        service.stopService()
        proxy.close()


# -- retention -----------------------------------------------------------------------


def _age_every_change(party: Party, seconds: int) -> None:
    party.query("UPDATE partysense_change SET committed_at = now() - %s * interval '1 second'",
                (seconds,))


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_retention_trims_old_changes_in_batches_and_keeps_the_newest(
        db_dsn: str, party: Party) -> None:
    from twisted.internet import reactor

    event_id, track_id = event_with_track(db_dsn)
    for _ in range(5):
        party.vote(event_id, track_id, up=False)  # two changes each
    _age_every_change(party, 7200)
    party.vote(event_id, track_id, up=False)  # two young changes
    newest = committed(db_dsn)[-1]
    queries = QueryService(db_dsn, reactor)
    retention = RetentionService(queries, reactor, retention_seconds=3600, batch=3)
    queries.startService()
    retention.startService()
    try:
        await queries.whenConnected()
        await retention.trim()
        assert retention.trimmed == 10  # in four batches: 3, 3, 3, 1
        assert len(committed(db_dsn)) == 2
        # Everything old now, the newest included: all but the newest goes.
        _age_every_change(party, 7200)
        await retention.trim()
        assert committed(db_dsn) == [newest]
        await retention.trim()
        assert committed(db_dsn) == [newest]
    finally:
        retention.stopService()
        queries.stopService()


# -- when the change log does not continue where the listener left off -------------


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The listener's warnings, as text."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn and \
                event.get("log_namespace", "").startswith("partysense.db.listener"):
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


async def _outage(service: ListenerService, db_dsn: str, during: Callable[[], None]) -> None:
    """Kill the listener's backend, run ``during`` while it is away, wait for it back."""
    reconnects = service.reconnects
    assert terminate_listener(db_dsn) == 1
    during()
    await eventually(lambda: service.reconnects > reconnects and service.connected,
                     "the listener to reconnect")


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_a_log_that_went_back_is_followed_from_its_new_end(
        db_dsn: str, party: Party, warnings: list[str]) -> None:
    event_id, track_id = event_with_track(db_dsn)
    delivered: Delivered = []
    service = _listener(db_dsn, delivered, backoff=lambda attempt: 0.5)
    started_over: list[int] = []
    service.on_start_over(lambda: started_over.append(len(delivered)))
    service.listen("firehose")
    service.startService()
    try:
        await service.whenConnected()
        for _ in range(3):
            party.vote(event_id, track_id, up=False)
        await eventually(lambda: len(delivered) == 6, "the first changes")
        assert started_over == []

        def restore_an_older_database() -> None:
            party.query("TRUNCATE partysense_change")
            party.query("ALTER SEQUENCE partysense_change_seq_seq RESTART")

        await _outage(service, db_dsn, restore_an_older_database)
        assert any("before seq 6 that the listener had already seen" in w for w in warnings)
        assert started_over == [6]  # said once, before any change of the new log
        party.vote(event_id, track_id)  # seq 1 again: new, not a duplicate
        await eventually(lambda: len(delivered) == 7, "the change after the restore")
        assert delivered[-1][1] == 1
    finally:
        service.stopService()


@pytest.mark.database
@pytest_twisted.ensureDeferred
async def test_a_log_trimmed_during_the_outage_is_reported(
        db_dsn: str, party: Party, warnings: list[str]) -> None:
    event_id, track_id = event_with_track(db_dsn)
    delivered: Delivered = []
    service = _listener(db_dsn, delivered, backoff=lambda attempt: 0.5)
    service.listen("firehose")
    service.startService()
    try:
        await service.whenConnected()
        party.vote(event_id, track_id)
        await eventually(lambda: len(delivered) == 1, "a first change")

        def another_daemon_trims() -> None:
            for _ in range(3):
                party.vote(event_id, track_id)
            party.query("DELETE FROM partysense_change "
                        "WHERE seq < (SELECT max(seq) FROM partysense_change)")

        await _outage(service, db_dsn, another_daemon_trims)
        assert any("may have been trimmed" in w for w in warnings), warnings
        assert [seq for _, seq, _ in delivered] == [1, 4]  # what the log still had
    finally:
        service.stopService()
