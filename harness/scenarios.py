"""The database goes away in every way it can: the scenarios of tests/test_faults.py.

Each scenario runs in a :class:`Scene` (a real twistd daemon, two seed
clients, a voter committing all the while, a watch on /healthz), breaks the
database, and checks that after recovery what every client received equals,
exactly and in order, the change log of what the database committed. It
returns how long the recovery took: tests/test_faults.py runs the scenarios
as tests, bench/recovery.py runs them again to report the figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

from harness.daemon import Daemon, wait_for
from harness.faults import (
    DedicatedPostgres,
    HealthWatch,
    HeldVote,
    Recovery,
    SeedClient,
    SilentProxy,
    Voter,
    assert_exact,
    committed,
    event_with_track,
    last_seq,
    recovery,
    terminate_listener,
    wait_delivered,
    wait_subscribed,
)

# The listener must notice a silent connection within this (issue 3).
SILENCE_DETECTED_WITHIN = 10.0


class Scene:
    """A daemon, two seed clients, a voter and a watch on /healthz."""

    def __init__(self, daemon_dsn: str, db_dsn: str, workdir: Path) -> None:
        self.db_dsn = db_dsn
        self.event_id, self.track_id = event_with_track(db_dsn)
        self.daemon = Daemon(daemon_dsn, workdir, "--no-demo").start()
        self.watch = HealthWatch(self.daemon)
        self.event_client = SeedClient(self.daemon, {"event": self.event_id})
        self.firehose = SeedClient(self.daemon, {"event": "ALL"})
        wait_subscribed(self.daemon, {f"event_{self.event_id}", "firehose"})
        self.voter = Voter(db_dsn, self.event_id, self.track_id)
        wait_for(lambda: len(self.firehose.frames) >= 5, 15, "votes to flow before the fault")

    def hold_vote(self) -> HeldVote:
        """A vote left uncommitted while the voter commits votes with higher ids."""
        held = HeldVote(self.db_dsn, self.event_id, self.track_id)
        since = time.monotonic()
        wait_for(lambda: self.voter.votes_since(since) >= 2, 15, "votes after the held one")
        return held

    def settle_and_check(self, fault: str, at: float, seq_before: int,
                         held: HeldVote) -> Recovery:
        """Stop voting, wait for the last change, and compare with the change log."""
        # Every outage lasts at least the first retry delay (0.25 s), and
        # /healthz is asked every 50 ms: it must have said what was wrong.
        unhealthy = wait_for(lambda: self.watch.first(503, at), 15, "/healthz to answer 503")
        assert unhealthy[1], "a 503 without a reason"
        wait_for(lambda: self.watch.first(200, unhealthy[0]), 60,
                 "/healthz to turn 200 again by itself")
        self.voter.stop()
        expected_event = committed(self.db_dsn, self.event_id)
        expected_all = committed(self.db_dsn)
        wait_delivered([(self.event_client, expected_event), (self.firehose, expected_all)])
        assert_exact(self.event_client, expected_event)
        assert_exact(self.firehose, expected_all)
        assert any(seq > seq_before for seq, _, _ in expected_all), "nothing voted after the fault"
        # The held vote committed after votes with higher ids: out of id order.
        held_seq = next(seq for seq, vote, _ in expected_all if vote == held.vote_id)
        assert any(vote > held.vote_id and seq < held_seq for seq, vote, _ in expected_all)
        assert "Traceback" not in self.daemon.log()
        return recovery(fault, at, self.watch, self.firehose, held.vote_id)

    def close(self) -> None:
        self.voter.stop()
        self.watch.stop()
        self.event_client.close()
        self.firehose.close()
        self.daemon.stop()


def _set_connections_allowed(dsn: str, allowed: bool) -> None:
    # Not from inside the database itself: PostgreSQL refuses that.
    connection = psycopg2.connect(make_dsn(dsn, dbname="postgres"))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(parse_dsn(dsn)["dbname"]), sql.Literal(allowed)))
    finally:
        connection.close()


# -- the scenarios ------------------------------------------------------------------


def backend_killed(scene: Scene) -> Recovery:
    """pg_terminate_backend on the listener; it reconnects at once."""
    held = scene.hold_vote()
    seq_before = last_seq(scene.db_dsn)
    at = time.monotonic()
    assert terminate_listener(scene.db_dsn) == 1
    held.commit()  # lower id than the voter's recent votes, committed last
    wait_for(lambda: "Lost the listener's PostgreSQL connection" in scene.daemon.log(), 10,
             "the daemon to notice its backend was killed")
    return scene.settle_and_check("backend killed", at, seq_before, held)


def backend_killed_and_locked_out(scene: Scene) -> Recovery:
    """The backend killed while new connections are refused: a long outage."""
    held = scene.hold_vote()
    _set_connections_allowed(scene.db_dsn, False)
    try:
        seq_before = last_seq_via(held)
        at = time.monotonic()
        assert terminate_listener_via(held) == 1
        wait_for(lambda: any("not currently accepting connections" in reason
                             for reason in scene.watch.unhealthy_reasons(at)), 15,
                 "/healthz to say that reconnecting is refused")
        # The voter's connection was open before the lock-out: it keeps voting.
        wait_for(lambda: last_seq_via(held) > seq_before + 10, 15, "votes during the outage")
        held.commit()
    finally:
        _set_connections_allowed(scene.db_dsn, True)
    return scene.settle_and_check("backend killed, reconnects refused", at, seq_before, held)


def postgres_restarted(scene: Scene, server: DedicatedPostgres) -> Recovery:
    """``pg_ctl restart -m fast``: every connection cut, the server back a second later."""
    seq_before = last_seq(scene.db_dsn)
    at = time.monotonic()
    server.restart()
    held = scene.hold_vote()  # the voter is already voting again
    wait_for(lambda: scene.voter.votes_since(at) >= 3, 30, "votes after the restart")
    held.commit()
    result = scene.settle_and_check("PostgreSQL restarted", at, seq_before, held)
    assert result.unhealthy_reasons, "/healthz never said the listener was down"
    return result


def silent_connection(scene: Scene, proxy: SilentProxy) -> Recovery:
    """The TCP connection goes silent without closing; noticed by the probe."""
    held = scene.hold_vote()
    seq_before = last_seq(scene.db_dsn)
    at = time.monotonic()
    assert proxy.go_silent() >= 2
    # The deadline is the promise: noticed within SILENCE_DETECTED_WITHIN, by the probe.
    unhealthy = wait_for(lambda: scene.watch.first(503, at), SILENCE_DETECTED_WITHIN,
                         "/healthz to report the silent connection")
    assert "did not answer a probe" in unhealthy[1], unhealthy
    held.commit()
    return scene.settle_and_check("silent TCP connection", at, seq_before, held)


# The locked-out scenario may not open new connections: it asks through
# a connection opened before the lock-out.
def _one_value(held: HeldVote, query: str) -> int:
    with held.connection.cursor() as cursor:
        cursor.execute(query)
        return int(cursor.fetchone()[0])


def down_at_start(server: DedicatedPostgres, dsn: str, workdir: Path) -> Recovery:
    """The daemon starts while PostgreSQL is down: 503 with the reason, then it connects.

    A client that subscribes before that is held (--grace) and served once the
    listener is in place: it gets every change, as one that came later does.
    """
    event_id, track_id = event_with_track(dsn)
    server.stop()
    daemon = Daemon(dsn, workdir, "--no-demo", "--grace", "120").start(wait=False)
    watch = HealthWatch(daemon)
    firehose: SeedClient | None = None
    early: SeedClient | None = None
    try:
        unhealthy = wait_for(lambda: watch.first(503, 0), 30, "/healthz to answer 503")
        assert "No such file or directory" in unhealthy[1] or "connect" in unhealthy[1], unhealthy
        # The first phones to come back, before the database answers the daemon.
        early = SeedClient(daemon, {"event": "ALL"})
        at = time.monotonic()
        server.start()
        healthy = wait_for(lambda: watch.first(200, at), 60, "/healthz to turn 200 by itself")
        firehose = SeedClient(daemon, {"event": "ALL"})
        wait_subscribed(daemon, {"firehose"})
        voter = Voter(dsn, event_id, track_id)
        wait_for(lambda: voter.votes >= 10, 15, "votes once the database is up")
        voter.stop()
        expected = committed(dsn)
        wait_delivered([(firehose, expected), (early, expected)])
        assert_exact(firehose, expected)
        assert_exact(early, expected)
        assert early.closed is None, early.closed  # held, not refused
        assert "Traceback" not in daemon.log()
        return Recovery("PostgreSQL down at start (from its start)", healthy[0] - at, None,
                        watch.unhealthy_reasons(0))
    finally:
        for client in (firehose, early):
            if client is not None:
                client.close()
        watch.stop()
        daemon.stop()


def last_seq_via(held: HeldVote) -> int:
    return _one_value(held, "SELECT coalesce(max(seq), 0) FROM partysense_change")


def terminate_listener_via(held: HeldVote) -> int:
    return _one_value(
        held, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
              "WHERE application_name = 'partysense-live' AND datname = current_database()")
