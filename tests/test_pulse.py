"""The pulse (votes per minute, /api/events/<id>/pulse) and /client.js over HTTP.

The query is checked on a real PostgreSQL, its sharing and bounds on a
Clock, the routes and cache headers on the real daemon. The page that draws
the pulse is in tests/test_screen_pulse.py.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from harness.daemon import Daemon
from partysense.db.changelog import PULSE_MINUTES, PULSE_QUERY, parse_pulse, pulse_params
from partysense.dialects.tokens import Tokens, mint
from partysense.web.clientjs import LONG, SHORT
from partysense.web.pulse import MAX_RUNNING, BusyHere, EventPulse, PulseReads
from tests.fakes import HeldQueries
from tests.support import Party

SECRET = b"p" * 40  # made here, for these tests only


def pulse_of(party: Party, event_id: int) -> Any:
    return parse_pulse(party.query(PULSE_QUERY, pulse_params(event_id)))


@pytest.mark.database
def test_the_pulse_counts_votes_cast_per_minute_over_the_last_30(party: Party) -> None:
    event_id, other = party.event("Busy"), party.event("Other")
    track = party.track()
    # In commit order, as the log has them: 40 minutes ago (out of the
    # window), 5 minutes ago, now; a down vote is an insert then an update,
    # a withdrawn vote a delete: one vote cast each.
    old = party.vote(event_id, track, user_id=1)
    party.query("UPDATE partysense_change SET committed_at = now() - interval '40 minutes'")
    for user in (2, 3):
        party.vote(event_id, track, up=False, user_id=user)
    party.query("UPDATE partysense_change SET committed_at = now() - interval '5 minutes' "
                "WHERE committed_at > now() - interval '1 minute'")
    party.vote(event_id, track, user_id=4)
    party.query("DELETE FROM event_vote WHERE id = %s", (old,))
    party.vote(other, track, user_id=5)

    pulse = pulse_of(party, event_id)
    assert len(pulse.votes) == PULSE_MINUTES
    assert sum(pulse.votes) == 3          # the two 5 minutes ago, and the one now
    assert pulse.votes[-1] == 1           # the current minute is the last
    assert pulse.votes[-6] + pulse.votes[-7] == 2  # 5 minutes ago, whatever the second
    assert pulse.start % 60 == 0 and pulse.start <= pulse.now < pulse.start + 30 * 60
    assert pulse.cursor == party.query("SELECT max(seq) FROM partysense_change")[0][0]
    # An event with no votes, or none at all: thirty zeros.
    assert pulse_of(party, 424242).votes == [0] * PULSE_MINUTES


def rows(start: int = 1_764_320_400, cursor: int = 77) -> list[tuple]:
    return [(start + 60 * i, i % 3, cursor, start + 1799.5) for i in range(PULSE_MINUTES)]


def get(resource: EventPulse, event: bytes, token: str | None = None,
        rest: bytes = b"pulse") -> DummyRequest:
    request = DummyRequest([rest])
    request.prepath = [b"api", b"events", event]
    if token is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {token}".encode()])
    resource.render_GET(request)
    return request


def body(request: DummyRequest) -> Any:
    return json.loads(b"".join(request.written))


@pytest.mark.logic
def test_one_query_per_event_per_interval_whoever_asks() -> None:
    clock, queries = Clock(), HeldQueries()
    resource = EventPulse(PulseReads(queries, clock, ttl=5.0), clock)
    requests = [get(resource, b"3") for _ in range(50)]
    assert len(queries.asked) == 1 and queries.asked[0][0] == {"event": 3}
    queries.asked[0][1].callback(rows())
    answers = [body(request) for request in requests]
    assert all(answer == answers[0] for answer in answers)
    assert answers[0]["event"] == 3 and answers[0]["cursor"] == 77
    assert answers[0]["votes"] == [i % 3 for i in range(PULSE_MINUTES)]
    assert answers[0]["fresh_in"] == 5.0

    clock.advance(2.0)
    later = body(get(resource, b"3"))
    assert len(queries.asked) == 1
    # Two seconds later the same answer, its clock moved on: a page's minute
    # boundaries follow the database's clock, not the age of the cache.
    assert later["now"] == answers[0]["now"] + 2.0 and later["fresh_in"] == 3.0
    clock.advance(3.0)
    get(resource, b"3")
    assert len(queries.asked) == 2


@pytest.mark.logic
def test_at_most_a_few_events_are_read_at_once() -> None:
    clock, queries = Clock(), HeldQueries()
    resource = EventPulse(PulseReads(queries, clock), clock)
    waiting = [get(resource, str(event).encode()) for event in range(1, MAX_RUNNING + 1)]
    refused = get(resource, b"999")
    assert len(queries.asked) == MAX_RUNNING
    assert refused.responseCode == 503 and refused.responseHeaders.getRawHeaders(
        b"retry-after") == [b"5"]
    queries.asked[0][1].callback(rows())
    assert waiting[0].responseCode == 200
    get(resource, b"999")  # room again
    assert len(queries.asked) == MAX_RUNNING + 1


@pytest.mark.logic
def test_the_limits_hold_back_new_reads_only_never_askers_of_a_running_one() -> None:
    clock, queries = Clock(), HeldQueries()
    reads = PulseReads(queries, clock)
    mine = [reads.pulse(event, "10.0.0.1") for event in (1, 2)]  # the address's two reads
    joined = reads.pulse(1, "10.0.0.1")   # event 1 is being read: it waits for that read
    refused = reads.pulse(3, "10.0.0.1")  # a third read for the address: 429
    failures: list[Any] = []
    refused.addErrback(failures.append)
    assert len(queries.asked) == 2 and not joined.called
    assert failures and failures[0].check(BusyHere)
    queries.asked[0][1].callback(rows())
    assert [d.called for d in mine + [joined]] == [True, False, True]
    reads.pulse(3, "10.0.0.1")             # one of its reads ended: room again
    assert len(queries.asked) == 3


@pytest.mark.logic
def test_bad_paths_are_404_and_tokens_are_checked() -> None:
    clock, queries = Clock(), HeldQueries()
    clock.advance(time.time())
    tokens = Tokens(SECRET, "HS256")
    resource = EventPulse(PulseReads(queries, clock), clock, tokens)
    for event, rest in ((b"0", b"pulse"), (b"99999999999999999999", b"pulse"), (b"3", b"x")):
        assert get(resource, event, rest=rest).responseCode == 404
    assert get(resource, b"3").responseCode == 401
    assert get(resource, b"3", "not.a.jwt").responseCode == 401
    assert get(resource, b"3", mint(SECRET, [4], 60, time.time())).responseCode == 403
    assert queries.asked == []
    allowed = get(resource, b"3", mint(SECRET, [3], 60, time.time()))
    queries.asked[0][1].callback(rows())
    assert allowed.responseCode == 200 and body(allowed)["event"] == 3


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@pytest.mark.daemon
def test_client_js_and_the_pulse_are_served(daemon: Daemon, party: Party) -> None:
    code, headers, script = fetch(daemon.url + "/client.js")
    assert code == 200 and headers["content-type"].startswith("text/javascript")
    assert b"export function connect" in script
    assert headers["cache-control"] == SHORT
    assert headers["access-control-allow-origin"] == "*"  # importable by another origin
    etag = headers["etag"]
    version = etag.strip('"')
    assert len(version) == 16

    # The page imports the versioned URL, cached for a year.
    code, _, app = fetch(daemon.url + "/static/app.js")
    assert f'from "/client.js?v={version}"'.encode() in app
    code, headers, again = fetch(f"{daemon.url}/client.js?v={version}")
    assert (code, headers["cache-control"], again) == (200, LONG, script)
    assert fetch(daemon.url + "/client.js?v=0123456789abcdef")[1]["cache-control"] == SHORT
    # Revalidation: 304 and nothing else.
    code, _, nothing = fetch(daemon.url + "/client.js", {"If-None-Match": etag})
    assert (code, nothing) == (304, b"")
    # One URL for the module.
    assert fetch(daemon.url + "/static/client.js")[0] == 404

    event_id = party.event()
    party.vote(event_id, party.track())
    code, _, answer = fetch(f"{daemon.url}/api/events/{event_id}/pulse")
    pulse = json.loads(answer)
    assert code == 200 and pulse["event"] == event_id and pulse["votes"][-1] == 1
    assert fetch(f"{daemon.url}/api/events/nope/pulse")[0] == 404
    assert fetch(f"{daemon.url}/api/events/{event_id}")[0] == 404
    # The list is where it was.
    assert json.loads(fetch(daemon.url + "/api/events")[2])[0]["id"] == event_id
    assert fetch(daemon.url + "/api/events/")[0] == 200
