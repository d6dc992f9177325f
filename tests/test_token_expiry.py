"""After a token's exp: the grace keeps what is subscribed, and buys nothing more.

The grace after ``token_expired`` runs once, from the token's ``exp``: the
same token again (from the URL, with a subscribe, in an auth) or another
expired one neither adds a subscription nor restarts it. The v2 session here
is built from its interfaces (a recording client, a Clock, stand-ins for the
database that answer at once), so that time is the test's; the daemon test
shows the same with a real short-lived token.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from twisted.internet.task import Clock
from websockets.sync.client import connect

from harness.daemon import Daemon
from partysense.core.errors import UNAUTHORIZED, ClientError
from partysense.core.hub import Hub
from partysense.dialects.access import GRACE, Access
from partysense.dialects.dialect import ClientCounters, Shared
from partysense.dialects.seed import SeedSession
from partysense.dialects.tokens import LEEWAY, TokenError, Tokens
from partysense.dialects.v2 import V2Session
from tests.fakes import AtOnce, NoDatabase, RecordingClient
from tests.support import Party

SECRET = secrets.token_bytes(32)
START = 1_800_000_000.0  # the Clock's epoch seconds: tokens' exp are on it


def token(exp: float, events: Any = (1, 2, 3), secret: bytes = SECRET) -> str:
    claims = {"exp": int(exp), "events": "*" if events == "*" else list(events)}
    return jwt.encode(claims, secret, algorithm="HS256")


def clock() -> Clock:
    made = Clock()
    made.advance(START)
    return made


class Said:
    """What an Access told its connection, in order."""

    def __init__(self) -> None:
        self.told: list[str] = []

    def access(self, clock: Clock, url_token: str | None = None) -> Access:
        return Access(Tokens(SECRET, "HS256"), clock, url_token,
                      expired=lambda: self.told.append("expired"),
                      lapsed=lambda: self.told.append("lapsed"))


# -- Access alone ------------------------------------------------------------------


@pytest.mark.logic
@pytest.mark.parametrize("how", ["url", "again", "another"])
def test_an_expired_token_buys_nothing_during_the_grace(how: str) -> None:
    time_ = clock()
    short = token(START + 10)
    said = Said()
    access = said.access(time_, url_token=short if how == "url" else None)
    access.grant(None if how == "url" else short)
    time_.advance(11)  # past exp: token_expired, and the grace
    assert said.told == ["expired"]
    presented = {"url": None, "again": short, "another": token(START + 5)}[how]
    with pytest.raises(TokenError, match="expired") as refused:
        access.grant(presented)
    assert refused.value.kind == "unauthorized" and refused.value.expired


@pytest.mark.logic
def test_the_grace_runs_once_from_the_expiry_whatever_is_resent() -> None:
    time_ = clock()
    short = token(START + 10)
    said = Said()
    access = said.access(time_, url_token=short)
    access.grant()
    time_.advance(10)
    assert said.told == ["expired"]
    for _ in range(5):  # every few seconds, the same token and another expired one
        time_.advance(5)
        for presented in (None, short, token(START + 8)):
            with pytest.raises(TokenError):
                access.grant(presented)
    assert said.told == ["expired"]
    time_.advance(GRACE - 25)  # exp + GRACE
    assert said.told == ["expired", "lapsed"]
    time_.advance(600)
    assert said.told == ["expired", "lapsed"]


@pytest.mark.logic
def test_a_fresh_token_within_the_leeway_is_taken_once_and_expires_at_once() -> None:
    time_ = clock()
    stale = token(START - 10)  # our clock runs ahead of the issuer's, say
    assert LEEWAY > 10
    said = Said()
    access = said.access(time_)
    assert access.grant(stale).allows(1)  # the first token of the connection
    with pytest.raises(TokenError, match="expired"):
        access.grant(stale)  # not twice
    time_.advance(0)
    assert said.told == ["expired"]
    time_.advance(GRACE - 10 - 0.001)
    assert said.told == ["expired"]
    time_.advance(0.001)  # the grace ran from its exp, not from when it came
    assert said.told == ["expired", "lapsed"]


@pytest.mark.logic
def test_a_valid_token_still_ends_the_grace() -> None:
    time_ = clock()
    said = Said()
    access = said.access(time_)
    access.grant(token(START + 10))
    time_.advance(20)
    with pytest.raises(TokenError):
        access.grant(token(START + 10))
    assert access.grant(token(START + 600)).allows(1)
    time_.advance(GRACE)
    assert said.told == ["expired"]
    assert access.grant().allows(2)  # the fresh one is the connection's now


# -- a v2 session, built from its interfaces ----------------------------------------


def shared_at_once(time_: Clock) -> Shared:
    stand_in = AtOnce()
    return Shared(hub=Hub(NoDatabase()), listener=stand_in, reads=stand_in,
                  events=stand_in, counters=ClientCounters(), clock=time_,
                  tokens=Tokens(SECRET, "HS256"))


def session(time_: Clock, url_token: str | None = None) -> tuple[V2Session, RecordingClient]:
    client = RecordingClient(url_token)
    return V2Session(client, shared_at_once(time_)), client


def ask(v2: V2Session, body: dict[str, Any]) -> None:
    v2.received(json.dumps(body))


@pytest.mark.logic
@pytest.mark.parametrize("url", [False, True])
def test_a_v2_client_subscribes_to_nothing_more_after_exp(url: bool) -> None:
    time_ = clock()
    short = token(START + 10)
    v2, client = session(time_, url_token=short if url else None)
    ask(v2, {"type": "subscribe", "event": 1, **({} if url else {"token": short})})
    assert client.types() == ["snapshot"]
    time_.advance(10)
    assert client.types() == ["token_expired"]
    time_.advance(5)
    ask(v2, {"type": "subscribe", "event": 2})
    ask(v2, {"type": "subscribe", "event": 3, "token": short})
    ask(v2, {"type": "auth", "token": short})
    ask(v2, {"type": "subscribe", "event": 1, "token": token(START + 9)})  # another, expired
    assert client.types() == ["unauthorized"] * 4
    without = "the token has expired" if url else "a token is required"
    assert [message for _, message in client.refused] == \
        [without] + ["the token has expired"] * 3
    assert v2.subscriptions == 1  # event 1 goes on through the grace
    time_.advance(GRACE - 5)  # exp + GRACE: not restarted by any of that
    assert client.sent == [{"type": "unsubscribed", "event": 1, "reason": "token_expired"}]
    assert v2.subscriptions == 0
    v2.close()


@pytest.mark.logic
def test_a_v2_client_with_a_fresh_token_in_time_loses_nothing() -> None:
    time_ = clock()
    v2, client = session(time_)
    ask(v2, {"type": "subscribe", "event": 1, "token": token(START + 10)})
    time_.advance(20)
    ask(v2, {"type": "auth", "token": token(START + 600)})
    ask(v2, {"type": "subscribe", "event": 2})
    assert client.types() == ["snapshot", "token_expired", "authorized", "snapshot"]
    time_.advance(GRACE)
    assert client.sent == [] and v2.subscriptions == 2
    v2.close()


@pytest.mark.logic
def test_a_seed_client_is_not_subscribed_with_a_token_past_its_exp() -> None:
    """Within the leeway, but a seed client cannot refresh: 4401 now, not after a
    moment of subscription."""
    time_ = clock()
    seed = SeedSession(RecordingClient(), shared_at_once(time_))
    failures: list[Any] = []
    seed.received(json.dumps({"event": 1, "token": token(START - 5)})).addErrback(
        failures.append)
    assert seed.subscriptions == 0
    assert len(failures) == 1 and failures[0].check(ClientError)
    assert (failures[0].value.code, failures[0].value.reason) == \
        (UNAUTHORIZED, "the token has expired")
    seed.received(json.dumps({"event": 1, "token": token(START + 5)}))
    assert seed.subscriptions == 1  # a valid one still subscribes
    seed.close()


# -- a real daemon, a real short-lived token ---------------------------------------


@pytest.mark.daemon
def test_a_short_lived_token_buys_nothing_after_its_exp(
        db_dsn: str, tmp_path: Path, party: Party) -> None:
    # Printable: the file's surrounding whitespace is stripped (docs/security.md).
    secret = secrets.token_urlsafe(32).encode("ascii")
    (tmp_path / "token.secret").write_bytes(secret)
    first, second = party.event(), party.event()
    short = jwt.encode({"exp": int(time.time()) + 3, "events": [first, second]}, secret,
                       algorithm="HS256")
    with Daemon(db_dsn, tmp_path, "--token-secret-file", str(tmp_path / "token.secret")) \
            as daemon, connect(daemon.ws_url + f"/?token={short}",
                               subprotocols=["partysense.v2"], open_timeout=10) as client:
        def answer(timeout: float = 30) -> dict[str, Any]:
            return dict(json.loads(client.recv(timeout=timeout)))

        client.send(json.dumps({"type": "subscribe", "event": first}))
        # In this order unless the machine is slow enough for exp to come first.
        assert sorted(answer()["type"] for _ in range(2)) == ["snapshot", "token_expired"]
        # Within the leeway after exp, the same token, from the URL and sent again.
        client.send(json.dumps({"type": "subscribe", "event": second}))
        client.send(json.dumps({"type": "subscribe", "event": second, "token": short}))
        client.send(json.dumps({"type": "auth", "token": short}))
        client.send(json.dumps({"type": "ping"}))
        answers = [answer() for _ in range(4)]
        assert [a.get("error", a["type"]) for a in answers] == \
            ["unauthorized", "unauthorized", "unauthorized", "pong"], answers
        # No second token_expired: the grace was not restarted; it ends as it was.
        # It ends GRACE (30 s) after exp, on the daemon's timer: waiting exactly as
        # long as that raced the daemon's timer against our own receive, so the
        # wait is the grace plus room for a loaded machine.
        assert answer(GRACE + 30) == \
            {"type": "unsubscribed", "event": first, "reason": "token_expired"}
