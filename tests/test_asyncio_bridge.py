"""bench/asyncio_bridge.py, the benchmark's floor, without the Node load generator
(tests/test_bench_smoke.py runs it under the benchmark): the seed protocol, each
NOTIFY's payload as is to its channel's subscribers and nobody else, a refused
first message, and a clean exit on SIGTERM.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from bench import services

pytestmark = pytest.mark.daemon


@contextmanager
def notifier(dsn: str) -> Iterator[psycopg2.extensions.cursor]:
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


def subscribe(client: ClientConnection, request: str, channel: str,
              cursor: psycopg2.extensions.cursor, timeout: float = 15.0) -> None:
    """Send ``request``, then NOTIFY ``channel`` until a frame comes back: the
    bridge's LISTEN is live. Frames of this warm-up say "warm"."""
    client.send(request)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cursor.execute("SELECT pg_notify(%s, 'warm')", (channel,))
        try:
            if client.recv(timeout=0.1) == "warm":
                return
        except TimeoutError:
            continue
    raise AssertionError(f"no frame on {channel} within {timeout} s of {request}")


def frames_until(client: ClientConnection, last: str, timeout: float = 10.0) -> list[str]:
    """The frames after the warm-up, up to and including ``last``."""
    frames: list[str] = []
    deadline = time.monotonic() + timeout
    while last not in frames:
        frame = client.recv(timeout=max(0.0, deadline - time.monotonic()))
        if frame != "warm":
            frames.append(str(frame))
    return frames


def test_forwards_each_payload_as_is_to_its_channels_subscribers(
        db_dsn: str, tmp_path: Path) -> None:
    bridge = services.start_asyncio(db_dsn, tmp_path)
    url = f"ws://127.0.0.1:{bridge.port}/"
    try:
        with notifier(db_dsn) as cursor, connect(url) as five, connect(url) as every, \
                connect(url) as six:
            subscribe(five, '{"event": 5}', "event_5", cursor)
            subscribe(every, '{"event": "ALL"}', "firehose", cursor)
            subscribe(six, '{"event": "6"}', "event_6", cursor)  # a string, as Node took it
            # Any text, as the trigger (or anybody) notified it: not parsed, not re-encoded.
            for channel, payload in (("event_5", '{"tid": 1,  "up":true} ünïcode'),
                                     ("firehose", "not even JSON"),
                                     ("event_5", "end"), ("firehose", "end"),
                                     ("event_6", "end")):
                cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            # One connection notified them in this order: a frame meant for another
            # channel would have come before "end".
            assert frames_until(five, "end") == ['{"tid": 1,  "up":true} ünïcode', "end"]
            assert frames_until(every, "end") == ["not even JSON", "end"]
            assert frames_until(six, "end") == ["end"]
            with connect(url) as stranger:
                stranger.send('{"channel": "event_5"}')
                with pytest.raises(ConnectionClosed) as closed:
                    stranger.recv(timeout=10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert bridge.alive(), bridge.log_tail()
    finally:
        code = bridge.stop()
    assert code == 0, bridge.log_tail()
