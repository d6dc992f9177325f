"""Three daemons on one PostgreSQL behind HAProxy, configured as contrib/ ships it.

200 seed and 200 v2 clients connect through HAProxy while votes flow on a
few events (a tenth of the clients on the firehose). One daemon is killed
(kill -9), or all three are restarted one after the other (SIGTERM): every
client of the daemon that went away reconnects through HAProxy to the
others, by itself, and the clients of the others are not disturbed. At the
end each v2 client's tallies equal SQL's GROUP BY (it resumed from its
cursor: nothing missed, nothing twice), and each seed client received, on
every connection, every change of its channel from its first one onward,
with no gap, none twice, up to the last one committed.

The live page, in Chromium, goes through the same: its daemon killed, then
the next one stopped, it shows "reconnecting", comes back by itself (its own
backoff with jitter) through HAProxy and shows what SQL says.

How long the clients took to come back is printed (docs/scaling.md quotes
it); no test asserts it. HAProxy is Debian's (apt-get install haproxy): the
tests skip without it, unless $PARTYSENSE_REQUIRE_HAPROXY is set (CI sets it).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.balancer import Cluster, haproxy_path
from harness.crowd import Crowd, Follower, SeedFollower, V2Follower
from harness.daemon import wait_for
from harness.faults import Voter, committed
from tests.browser import FULL_HD, Screen, chromium
from tests.support import Party

pytestmark = pytest.mark.slow  # and a layer per test: daemon, or browser for the page

SEED_CLIENTS = 200
V2_CLIENTS = 200
EVENTS = 4
TRACKS_PER_EVENT = 2
FIREHOSE_EVERY = 10    # one client in ten follows every event
VOTE_INTERVAL = 0.4    # per voter (one per event and track): ~20 votes/s in all


def require_haproxy() -> None:
    if haproxy_path() is None:
        if os.environ.get("PARTYSENSE_REQUIRE_HAPROXY"):
            pytest.fail("the scale-out tests need HAProxy (apt-get install haproxy)")
        pytest.skip("no haproxy: apt-get install haproxy")


@pytest.fixture
def cluster(db_dsn: str, tmp_path: Path) -> Iterator[Cluster]:
    require_haproxy()
    value = Cluster(db_dsn, tmp_path)
    try:
        yield value
    finally:
        value.close()
        assert "Traceback" not in "".join(d.log() for d in value.daemons)


class VotingParty:
    """The events and tracks voted on, the voters, and what SQL says."""

    def __init__(self, party: Party) -> None:
        self.party = party
        self.events = [party.event(f"Room {n}") for n in range(EVENTS)]
        self.pairs = [(event, party.track(f"Song {event}.{n}"))
                      for event in self.events for n in range(TRACKS_PER_EVENT)]
        self.voters: list[Voter] = []

    def followers(self) -> list[Follower]:
        def channel(n: int) -> int | None:
            return None if n % FIREHOSE_EVERY == 0 else self.events[n % EVENTS]
        return ([SeedFollower(channel(n)) for n in range(SEED_CLIENTS)]
                + [V2Follower(channel(n)) for n in range(V2_CLIENTS)])

    def start_voting(self) -> None:
        self.voters = [Voter(self.party.dsn, event, track, interval=VOTE_INTERVAL)
                       for event, track in self.pairs]

    def stop_voting(self) -> None:
        for voter in self.voters:
            voter.stop()

    def tallies(self) -> dict[tuple[int, int], tuple[int, int]]:
        rows = self.party.query(
            "SELECT event_id, track_id, count(*) FILTER (WHERE is_positive), "
            "count(*) FILTER (WHERE NOT is_positive) FROM event_vote GROUP BY event_id, track_id")
        return {(event, track): (up, down) for event, track, up, down in rows}


@pytest.fixture
def votes(party: Party) -> Iterator[VotingParty]:
    value = VotingParty(party)
    yield value
    value.stop_voting()


@pytest.fixture
def crowds() -> Iterator[list[Crowd]]:
    made: list[Crowd] = []
    yield made
    for crowd in made:
        crowd.stop()


# -- the checks ----------------------------------------------------------------------


def received(follower: Follower) -> int:
    if isinstance(follower, SeedFollower):
        return follower.received()
    assert isinstance(follower, V2Follower)
    return len(follower.seqs)


def wait_flowing(crowd: Crowd) -> None:
    """Every client receives a change it did not have yet: votes reach all of them."""
    marks = {id(f): received(f) for f in crowd.followers}
    wait_for(lambda: all(received(f) > marks[id(f)] for f in crowd.followers), 60,
             "a new change to reach every client")


def last_received(follower: Follower) -> int | None:
    if isinstance(follower, SeedFollower):
        return follower.spans[-1][-1] if follower.spans and follower.spans[-1] else None
    assert isinstance(follower, V2Follower)
    return follower.cursor


def settle_and_check(crowd: Crowd, votes: VotingParty) -> None:
    """Voting stops; every client gets to the last change of its channel; then
    each one is compared with the change log and SQL."""
    votes.stop_voting()
    dsn = votes.party.dsn
    logs: dict[int | None, list[int]] = {None: [seq for seq, _, _ in committed(dsn)]}
    for event in votes.events:
        logs[event] = [seq for seq, _, _ in committed(dsn, event)]
    wait_for(lambda: all(last_received(f) == logs[f.channel][-1] for f in crowd.followers), 60,
             "every client to receive the last change of its channel")
    assert not crowd.not_live()

    sql = votes.tallies()
    for follower in crowd.followers:
        assert not follower.problems, follower.problems[:5]
        log = logs[follower.channel]
        if isinstance(follower, SeedFollower):
            check_seed(follower, log)
        else:
            assert isinstance(follower, V2Follower)
            assert follower.resets == 0, "the change log no longer reached back to a cursor"
            assert follower.first_cursor is not None
            # Nothing missed, nothing twice, in commit order, across every reconnect.
            assert follower.seqs == [s for s in log if s > follower.first_cursor]
            wanted = {key: value for key, value in sql.items()
                      if follower.channel is None or key[0] == follower.channel}
            assert follower.tallies() == wanted


def check_seed(follower: SeedFollower, log: list[int]) -> None:
    """On each connection: every change from its first one on, once, in order,
    and nothing already received on an earlier connection."""
    before = 0
    for span in follower.spans:
        if not span:
            continue
        assert span[0] > before, f"seq {span[0]} again after a reconnect"
        assert span == [s for s in log if span[0] <= s <= span[-1]], \
            f"a gap or a duplicate between seq {span[0]} and {span[-1]}"
        before = span[-1]
    assert follower.spans[-1] and follower.spans[-1][-1] == log[-1]


def comeback(crowd: Crowd, since: float) -> str:
    """How long the clients that lost their connection after ``since`` took to be
    subscribed again (measured, printed, never asserted)."""
    waits = [back - lost for f in crowd.followers
             for lost, back in zip(f.lost_at, f.back_at, strict=False) if lost >= since]
    if not waits:
        return "no client lost its connection"
    last = max(back for f in crowd.followers for back in f.back_at if back >= since)
    return (f"{len(waits)} clients back in median {statistics.median(waits) * 1000:.0f} ms, "
            f"max {max(waits) * 1000:.0f} ms; the last one {(last - since) * 1000:.0f} ms "
            f"after the fault; failed attempts {crowd.refused() or 'none'}")


def start_crowd(cluster: Cluster, votes: VotingParty, crowds: list[Crowd]) -> Crowd:
    crowd = Crowd(cluster.lb.ws_url, votes.followers())
    crowds.append(crowd)
    crowd.wait_live()
    votes.start_voting()
    wait_flowing(crowd)
    spread = cluster.clients()
    # leastconn spreads them, and every client is counted by exactly one daemon.
    assert sum(spread) == SEED_CLIENTS + V2_CLIENTS and min(spread) > 0, spread
    return crowd


def disturbed(crowd: Crowd, before: dict[int, int]) -> list[Follower]:
    """The clients that lost their connection since ``before`` (their disconnects then)."""
    return [f for f in crowd.followers if f.disconnects > before[id(f)]]


def wait_moved(crowd: Crowd, before: dict[int, int], count: int, what: str) -> None:
    """Until ``count`` clients have lost their connection since ``before``, and
    every client is subscribed again."""
    wait_for(lambda: len(disturbed(crowd, before)) >= count, 30, what)
    crowd.wait_live()


# -- the tests -----------------------------------------------------------------------


@pytest.mark.daemon
def test_a_killed_daemons_clients_move_to_the_others(
        cluster: Cluster, votes: VotingParty, crowds: list[Crowd]) -> None:
    crowd = start_crowd(cluster, votes, crowds)
    before = {id(f): f.disconnects for f in crowd.followers}
    victim_clients = cluster.clients()[0]

    at = time.monotonic()
    cluster.kill(0)
    # Exactly the victim's clients lost their connection; the others' did not.
    wait_moved(crowd, before, victim_clients, "the killed daemon's clients to notice")
    print(f"kill -9 of 1 daemon of 3: {comeback(crowd, at)}")
    assert len(disturbed(crowd, before)) == victim_clients
    assert cluster.lb.states()["live1"] == "DOWN"
    # A dead server is never chosen twice: the first refused connection
    # marked it down and was sent elsewhere; no client saw HAProxy's 503.
    assert not [reason for reason in crowd.refused() if "503" in reason], crowd.refused()
    spread = cluster.clients()
    assert spread[0] == 0 and sum(spread) == SEED_CLIENTS + V2_CLIENTS, spread

    wait_flowing(crowd)  # votes still reach everybody, on the two that are left
    settle_and_check(crowd, votes)


@pytest.mark.daemon
def test_a_rolling_restart_loses_nothing(
        cluster: Cluster, votes: VotingParty, crowds: list[Crowd]) -> None:
    crowd = start_crowd(cluster, votes, crowds)
    for index, name in enumerate(cluster.names):
        before = {id(f): f.disconnects for f in crowd.followers}
        on_it = cluster.clients()[index]
        at = time.monotonic()
        cluster.restart(index)  # SIGTERM, start again, HAProxy sees it UP
        wait_moved(crowd, before, on_it, f"the clients of {name} to notice its restart")
        print(f"restart of {name}: {comeback(crowd, at)}")
        assert on_it > 0 and len(disturbed(crowd, before)) == on_it
        assert sum(cluster.clients()) == SEED_CLIENTS + V2_CLIENTS
        wait_flowing(crowd)
    assert set(cluster.lb.states().values()) == {"UP"}
    settle_and_check(crowd, votes)


# -- the page ------------------------------------------------------------------------

# Every state the page's status takes, with the page's clock, from now on.
RECORD_STATES = """() => {
    window.__states = [];
    const status = document.getElementById("status");
    new MutationObserver(() => window.__states.push([status.dataset.state, Date.now()]))
        .observe(status, {attributes: true, attributeFilter: ["data-state"]});
    return Date.now();
}"""


@pytest.fixture
def screen() -> Iterator[Screen]:
    with chromium() as browser:
        context = browser.new_context(viewport=FULL_HD)
        try:
            yield Screen(context)
        finally:
            context.close()


def holder(cluster: Cluster) -> int:
    """The daemon the page's WebSocket is on: the only one with a client."""
    def one() -> tuple[int] | None:  # a tuple: index 0 is an answer too
        counts = cluster.clients()
        return (counts.index(1),) if sorted(counts) == [0] * (len(counts) - 1) + [1] else None
    return wait_for(one, 15, "exactly one daemon to hold the page's WebSocket")[0]


@pytest.mark.browser
def test_the_page_comes_back_through_haproxy_by_itself(
        cluster: Cluster, party: Party, screen: Screen) -> None:
    event_id = party.event("Behind HAProxy")
    tracks = [party.track(f"Track {n}") for n in range(3)]
    for user, track in enumerate(tracks):
        party.vote(event_id, track, up=user != 1, user_id=user)
    screen.page.goto(f"{cluster.lb.url}/?event={event_id}")
    screen.expect_state("live")
    screen.expect_tallies(party.tallies(event_id))

    user = 100
    for fault in ("kill -9", "SIGTERM"):
        index = holder(cluster)
        since = screen.page.evaluate(RECORD_STATES)
        if fault == "kill -9":
            cluster.kill(index)
        else:
            cluster.daemons[index].stop()
        for track in tracks:  # while the page is away: it must catch up from its cursor
            user += 1
            party.vote(event_id, track, up=user % 2 == 0, user_id=user)
        wait_for(lambda: [s for s, _ in screen.page.evaluate("window.__states")][-1:] == ["live"],
                 30, f"the page to be live again after {fault}")
        states = screen.page.evaluate("window.__states")
        assert "reconnecting" in [state for state, _ in states], states
        print(f"page after {fault} of its daemon: live again after "
              f"{states[-1][1] - since} ms, states {[state for state, _ in states]}")
        screen.expect_tallies(party.tallies(event_id))
        assert holder(cluster) != index  # on another daemon, through HAProxy
        cluster.daemons[index].start()   # back for the next round, on its port
        cluster.lb.wait_state(cluster.names[index], "UP")
    user += 1
    party.vote(event_id, tracks[0], up=False, user_id=user)
    screen.expect_tallies(party.tallies(event_id))
    assert screen.problems == []
