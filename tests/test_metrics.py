"""``GET /metrics``: every metric is there, and moves when it should."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from partysense.core.change import parse_change
from partysense.web.metrics import DaemonMetrics
from tests.rawws import frame, open_raw, read_frame, send_text
from tests.support import Party

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

EVERY_METRIC = [
    "partysense_clients",
    "partysense_clients_by_protocol",
    "partysense_channels_listened",
    "partysense_notifications_total",
    "partysense_frames_sent_total",
    "partysense_sent_bytes_total",
    "partysense_slow_clients_closed_total",
    "partysense_bad_inputs_total",
    "partysense_listener_reconnects_total",
    "partysense_changes_trimmed_total",
    "partysense_listener_up",
    "partysense_notification_queue_usage",
    "partysense_delivery_delay_seconds_count",
    "partysense_delivery_delay_seconds_bucket",
    "partysense_connections_waiting",
    "partysense_connections_waiting_limit",
    "partysense_connections_refused_total",
]


def scrape(daemon: Daemon) -> Samples:
    with urllib.request.urlopen(daemon.admin_url + "/metrics", timeout=5) as response:
        assert response.headers["content-type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.mark.daemon
def test_every_metric_is_present_and_moves(daemon: Daemon, party: Party) -> None:
    event_id = party.event("Metrics")
    track_id = party.track("Song", "Band")
    # The queue usage is polled once the listener is up.
    before = wait_for(lambda: (s := scrape(daemon)) and
                      "partysense_notification_queue_usage" in names(s) and s,
                      15, "every metric to appear")
    assert set(EVERY_METRIC) <= names(before)
    assert value(before, "partysense_listener_up") == 1
    assert 0 <= value(before, "partysense_notification_queue_usage") <= 1

    with connect(daemon.ws_url, open_timeout=10) as seed, \
            connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as v2:
        seed.send(json.dumps({"event": event_id}))
        v2.send(json.dumps({"type": "subscribe", "event": event_id, "id": "m"}))
        assert json.loads(v2.recv(timeout=10))["type"] == "snapshot"
        wait_for(lambda: value(scrape(daemon), "partysense_channels_listened") == 1, 10,
                 "the event's channel to be listened")
        connected = scrape(daemon)
        assert value(connected, "partysense_clients") == 2
        assert value(connected, "partysense_clients_by_protocol", protocol="seed") == 1
        assert value(connected, "partysense_clients_by_protocol", protocol="v2") == 1

        party.vote(event_id, track_id, up=False)  # an insert, then an update
        frames = [seed.recv(timeout=10) for _ in range(2)] + [v2.recv(timeout=10)
                                                              for _ in range(2)]
        after = wait_for(lambda: (s := scrape(daemon)) and
                         value(s, "partysense_frames_sent_total") >= 4 and s,
                         10, "the frames to be counted")

    def moved(name: str) -> float:
        return value(after, name) - value(connected, name)

    assert moved("partysense_notifications_total") == 2
    assert moved("partysense_frames_sent_total") == 4
    assert moved("partysense_sent_bytes_total") >= sum(len(f.encode("utf-8")) for f in frames)
    assert moved("partysense_delivery_delay_seconds_count") == 2
    # Commit to frame on one machine: well under a minute, never negative.
    assert 0 <= moved("partysense_delivery_delay_seconds_sum") < 60
    assert value(after, "partysense_delivery_delay_seconds_bucket", le="60.0") == 2

    # Closed clients leave the gauges and keep their bytes in the counter (their
    # channel stays LISTENed for --linger, 30 s: tests/test_listen_sharing.py).
    closed = wait_for(lambda: (s := scrape(daemon)) and value(s, "partysense_clients") == 0
                      and s, 10, "the clients to go")
    assert value(closed, "partysense_sent_bytes_total") >= value(after,
                                                                 "partysense_sent_bytes_total")


@pytest.mark.daemon
def test_bad_input_counts_its_kind(daemon: Daemon) -> None:
    before = scrape(daemon)
    with connect(daemon.ws_url, open_timeout=10) as bad:
        bad.send("not json")
        with pytest.raises(ConnectionClosed):
            bad.recv(timeout=10)
    after = wait_for(lambda: (s := scrape(daemon)) and
                     value(s, "partysense_bad_inputs_total", kind="not_json") == 1 and s,
                     10, "the bad input to be counted")
    assert value(before, "partysense_bad_inputs_total", kind="not_json") == 0
    assert value(after, "partysense_bad_inputs_total", kind="binary") == 0


@pytest.mark.daemon
@pytest.mark.parametrize(("payload", "kind", "code"), [
    (b"x" * 5000, "too_big", 1009),
    (b'{"event": "\xff"}', "not_json", 1007),
])
def test_what_autobahn_refuses_is_counted_and_logged_once(
        daemon: Daemon, payload: bytes, kind: str, code: int) -> None:
    """Oversized and non-UTF-8 messages are refused by Autobahn itself, not by a session."""
    client = open_raw(daemon.port)
    try:
        client.sendall(frame(payload))
        opcode, body = read_frame(client)
    finally:
        client.close()
    assert (opcode, int.from_bytes(body[:2], "big")) == (8, code)
    wait_for(lambda: value(scrape(daemon), "partysense_bad_inputs_total", kind=kind) == 1,
             10, f"{kind} to be counted")
    closing = [line for line in daemon.log().splitlines() if f"code {code})" in line]
    assert len(closing) == 1 and f"({kind}, code {code})" in closing[0]
    assert "failing WebSocket connection" not in daemon.log()


@pytest.mark.daemon
def test_listener_down_and_back(daemon: Daemon, party: Party) -> None:
    assert value(scrape(daemon), "partysense_listener_reconnects_total") == 0
    killed = party.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'partysense-live' AND datname = current_database()")
    assert killed == [(True,)]
    # The first retry waits at least half a second (default_backoff): time to see it down.
    wait_for(lambda: value(scrape(daemon), "partysense_listener_up") == 0, 10,
             "listener_up to drop to 0")
    back = wait_for(lambda: (s := scrape(daemon)) and
                    value(s, "partysense_listener_up") == 1 and s, 20, "the listener to return")
    assert value(back, "partysense_listener_reconnects_total") == 1


@pytest.mark.daemon
def test_a_stalled_client_counts_as_slow(db_dsn: str, tmp_path: Path, party: Party) -> None:
    event_id = party.event("Slow")
    # Frames of about 800 bytes, 6 MB in all: more than the kernel buffers of a socket.
    track_id = party.track("n" * 256, "a" * 256)
    with Daemon(db_dsn, tmp_path, "--max-queue-bytes", "65536") as daemon:
        stalled = open_raw(daemon.port, rcvbuf=4096)
        try:
            send_text(stalled, json.dumps({"event": event_id}))
            wait_for(lambda: value(scrape(daemon), "partysense_channels_listened") == 1, 10,
                     "the subscription")
            party.query("INSERT INTO event_vote (event_id, track_id) "
                        "SELECT %s, %s FROM generate_series(1, 8000)", (event_id, track_id))
            slow = wait_for(lambda: (s := scrape(daemon)) and
                            value(s, "partysense_slow_clients_closed_total") == 1 and s,
                            30, "the stalled client to be closed")
        finally:
            stalled.close()
    assert value(slow, "partysense_bad_inputs_total", kind="not_json") == 0
    assert ("partysense_bad_inputs_total", (("kind", "too_slow"),)) not in slow


# -- the pieces, without a daemon ---------------------------------------------


def vote(seq: int, ts: str) -> Any:
    """A change as the trigger would announce it, committed at ``ts``."""
    return parse_change(
        f'{{"eid" : 1, "event" : "E", "track" : "T", "artist" : "A", "tid" : 2, "up" : true, '
        f'"op" : "insert", "vote" : {seq}, "prev" : null, "seq" : {seq}, '
        f'"truncated" : false, "ts" : {ts}}}')


@pytest.mark.logic
def test_delay_is_observed_from_the_commit_time_and_never_negative() -> None:
    clock = Clock()
    clock.advance(1000.0)
    metrics = DaemonMetrics(clock, CollectorRegistry())
    metrics.observe_delay("event_1", vote(1, "999.75"))
    metrics.observe_delay("event_1", vote(2, "1000.5"))   # the database's clock is ahead
    metrics.observe_delay("event_1", vote(3, "null"))     # an old trigger: no commit time
    registry = metrics.registry
    assert registry.get_sample_value("partysense_delivery_delay_seconds_count") == 2
    assert registry.get_sample_value("partysense_delivery_delay_seconds_sum") == 0.25
    assert registry.get_sample_value("partysense_delivery_delay_seconds_bucket",
                                     {"le": "0.001"}) == 1


@pytest.mark.logic
def test_each_daemon_has_its_own_registry() -> None:
    first, second = DaemonMetrics(Clock()), DaemonMetrics(Clock())
    first.observe_delay("firehose", vote(1, "0"))
    assert first.registry is not second.registry
    assert second.registry.get_sample_value("partysense_delivery_delay_seconds_count") == 0
