"""Ready means ready: the first clients through the door are held, then served.

The port accepts connections before the daemon's database connections are
up (a remote database takes a round trip or more). A client that connects
the very moment the port accepts, at the first start and after a restart,
is not refused: its subscription waits (--grace) and is served once the
listener is in place. Here the daemon reaches PostgreSQL through a proxy
that holds its connections until the clients are in (the port says 503
meanwhile), and both kinds of client connect as soon as a connection
succeeds (polling the port every few milliseconds). They must then get
every vote: the seed client each change from the first it receives, the v2
client a snapshot and changes that add up to SQL's tallies.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from harness.daemon import Daemon, wait_for
from harness.faults import SeedClient, SilentProxy, committed
from tests.support import Party, nonzero, tally
from tests.test_dbcli import refused_port

pytestmark = pytest.mark.daemon


def the_moment_it_accepts(daemon: Daemon, subscribe: Any) -> Any:
    """``subscribe()`` retried every few milliseconds until a connection succeeds."""
    def attempt() -> Any:
        try:
            return subscribe()
        except (OSError, AssertionError):
            return None  # refused: the port does not accept yet
    return wait_for(attempt, 30, "the port to accept")


def v2_subscribed(daemon: Daemon, event_id: int) -> ClientConnection:
    client = connect(daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10)
    client.send(json.dumps({"type": "subscribe", "event": event_id}))
    return client


def serves_the_first_comers(daemon: Daemon, gate: threading.Event, party: Party,
                            event_id: int, track_id: int) -> None:
    seed = the_moment_it_accepts(daemon, lambda: SeedClient(daemon, {"event": event_id}))
    v2 = v2_subscribed(daemon, event_id)
    try:
        # Both in while the daemon cannot reach its database yet.
        assert daemon.health() == (503, {"status": "unavailable"})
        gate.set()
        snapshot = json.loads(v2.recv(timeout=30))  # held until the listener is in place
        assert snapshot["type"] == "snapshot", snapshot
        counts = {t["tid"]: [t["up"], t["down"]] for t in snapshot["tracks"]}
        cursor = snapshot["cursor"]

        # Vote until the seed client is served, then ten more: it gets each of them.
        def seed_served() -> bool:
            party.vote(event_id, track_id, user_id=1000 + len(seed.frames))
            return wait_for_frame(seed)
        wait_for(seed_served, 30, "the held seed client to be served")
        first = seed.changes()[0][0]
        for user in range(10):
            party.vote(event_id, track_id, up=user % 3 != 0, user_id=user + 1)
        log = [change for change in committed(party.dsn, event_id) if change[0] >= first]
        wait_for(lambda: len(seed.changes()) >= len(log), 30, "every change to the seed client")
        assert seed.changes() == log
        assert seed.closed is None, seed.closed  # held, never refused

        # The v2 client: its snapshot and every change after it add up to SQL's tallies.
        newest = log[-1][0]
        while cursor < newest:
            change = json.loads(v2.recv(timeout=30))
            assert change["type"] == "change" and change["seq"] > cursor, change
            cursor = change["seq"]
            tally(counts, change)
        assert nonzero(counts) == party.tallies(event_id)
    finally:
        seed.close()
        v2.close()


def wait_for_frame(seed: SeedClient) -> bool:
    try:
        wait_for(lambda: seed.frames, 0.5, "a frame")
    except AssertionError:
        return False
    return True


# Through the proxy the daemon connects to another port, which a ~/.pgpass
# entry for the real server would not match: embedded (trust) only.
@pytest.mark.embedded_only
def test_the_first_clients_get_their_votes_at_start_and_after_a_restart(
        db_dsn: str, tmp_path: Path, party: Party) -> None:
    event_id, track_id = party.event("Doors open"), party.track()
    party.vote(event_id, track_id, user_id=999)  # a tally for the snapshot
    gates = [threading.Event(), threading.Event()]
    proxies = [SilentProxy(db_dsn, gate) for gate in gates]
    daemon = Daemon(proxies[0].dsn(db_dsn), tmp_path, "--no-demo")
    with refused_port() as port:
        daemon.port = port  # known before the daemon starts, so clients can knock at once
    try:
        daemon.spawn()
        serves_the_first_comers(daemon, gates[0], party, event_id, track_id)
        daemon.stop()
        daemon.dsn = proxies[1].dsn(db_dsn)  # a database that answers late again
        daemon.spawn()  # on the same port
        serves_the_first_comers(daemon, gates[1], party, event_id, track_id)
    finally:
        daemon.stop()
        for gate, proxy in zip(gates, proxies, strict=True):
            gate.set()
            proxy.close()
