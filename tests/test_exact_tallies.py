"""The v2 promise, as a property: snapshot + changes == SQL at every quiet moment.

Hypothesis writes the party: Django-style votes, changed minds, deletions,
transactions held open and committed out of id order, the listener's
backend killed, the client disconnecting and resuming from its cursor.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from tests.support import Party, nonzero, tally

pytestmark = pytest.mark.daemon


class Watcher:
    """A v2 client in a thread, keeping tallies from a snapshot and changes."""

    def __init__(self, daemon: Daemon, event_id: int) -> None:
        self._daemon = daemon
        self._event_id = event_id
        self._lock = threading.Lock()
        self.counts: dict[int, list[int]] = {}
        self.cursor: int | None = None
        self.problems: list[str] = []
        self._client: Any = None
        self._thread: threading.Thread | None = None
        self.connect()

    def connect(self) -> None:
        client = connect(self._daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10)
        request: dict[str, Any] = {"type": "subscribe", "event": self._event_id}
        if self.cursor is not None:
            request["cursor"] = self.cursor

        def answered() -> dict[str, Any] | None:
            # While the listener reconnects the daemon answers "unavailable":
            # a real client retries, and so do we, once health says it may work.
            health = self._daemon.health()
            if health is None or health[0] != 200:
                return None
            client.send(json.dumps(request))
            answer = json.loads(client.recv(timeout=10))
            return None if answer.get("error") == "unavailable" else answer

        first = wait_for(answered, 20, "a subscription the daemon can serve")
        with self._lock:
            if first["type"] == "snapshot":
                self.counts = {t["tid"]: [t["up"], t["down"]] for t in first["tracks"]}
            elif first["type"] != "subscribed":
                self.problems.append(f"unexpected answer {first}")
            self.cursor = first["cursor"]
        self._client = client
        self._thread = threading.Thread(target=self._receive, args=(client,), daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        self._client.close()
        assert self._thread is not None
        self._thread.join(10)

    def _receive(self, client: Any) -> None:
        try:
            for text in client:
                self.apply(json.loads(text))
        except ConnectionClosed:
            pass

    def apply(self, change: dict[str, Any]) -> None:
        with self._lock:
            if change.get("type") != "change":
                self.problems.append(f"unexpected message {change}")
                return
            if self.cursor is not None and change["seq"] <= self.cursor:
                self.problems.append(f"duplicate or out of order: {change['seq']} after "
                                     f"{self.cursor}")
                return
            self.cursor = change["seq"]
            tally(self.counts, change)

    def tallies(self) -> dict[int, tuple[int, int]]:
        with self._lock:
            return nonzero(self.counts)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("vote"), st.integers(0, 2), st.booleans()),
        st.tuples(st.just("flip"), st.integers(0, 50)),
        st.tuples(st.just("delete"), st.integers(0, 50)),
        st.tuples(st.just("out_of_order"), st.integers(0, 2), st.booleans()),
        st.just(("kill_listener",)),
        st.just(("client_away",)),
        st.just(("quiet",)),
    ),
    min_size=3, max_size=14,
)


def kill_listener(party: Party) -> None:
    """Kill the listener's backend (waiting for it to be back from the last kill)."""
    wait_for(lambda: party.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'partysense-live' AND datname = current_database()"),
        20, "a listener connection to kill")


def test_snapshot_plus_changes_equal_sql(daemon: Daemon, party: Party) -> None:
    tracks = [party.track(f"Track {i}", f"Artist {i}") for i in range(3)]

    @settings(max_examples=20, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(operations)
    def party_goes_on(steps: list[tuple]) -> None:
        event_id = party.event()
        # Votes that exist before the client arrives land in its snapshot.
        party.vote(event_id, tracks[0], up=False)
        watcher = Watcher(daemon, event_id)
        away = False

        def quiet() -> None:
            expected = party.tallies(event_id)
            wait_for(lambda: watcher.tallies() == expected, 20,
                     f"client tallies {watcher.tallies()} to equal SQL {expected}")

        for step in steps:
            kind = step[0]
            if kind == "vote":
                party.vote(event_id, tracks[step[1]], up=step[2])
            elif kind in ("flip", "delete"):
                votes = party.query("SELECT id FROM event_vote WHERE event_id = %s ORDER BY id",
                                    (event_id,))
                if votes:
                    vote_id = votes[step[1] % len(votes)][0]
                    statement = ("UPDATE event_vote SET is_positive = NOT is_positive WHERE id = %s"
                                 if kind == "flip" else "DELETE FROM event_vote WHERE id = %s")
                    party.query(statement, (vote_id,))
            elif kind == "out_of_order":
                # The first transaction takes the lower vote id but commits last.
                held = psycopg2.connect(party.dsn)
                with held.cursor() as cursor:
                    cursor.execute("INSERT INTO event_vote (event_id, track_id, is_positive) "
                                   "VALUES (%s, %s, %s)", (event_id, tracks[step[1]], step[2]))
                party.vote(event_id, tracks[(step[1] + 1) % 3], up=not step[2])
                held.commit()
                held.close()
            elif kind == "kill_listener":
                kill_listener(party)
            elif kind == "client_away" and not away:
                watcher.disconnect()
                away = True
            elif kind == "quiet":
                if away:
                    watcher.connect()
                    away = False
                quiet()
        if away:
            watcher.connect()
        quiet()
        watcher.disconnect()
        assert watcher.problems == []

    party_goes_on()
    assert "Traceback" not in daemon.log()
