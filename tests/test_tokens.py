"""Signed access tokens (partysense/dialects/tokens.py): every case a client can present."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.task import Clock
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import Daemon, wait_for
from partysense.dialects.access import Access
from partysense.dialects.tokens import TokenError, Tokens, from_files
from tests.support import Party

SECRET = b"s" * 40  # made here, for these tests only


def hs256(claims: dict[str, Any], secret: bytes = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def soon(seconds: float = 600) -> int:
    return int(time.time() + seconds)


# -- the checks, without a daemon ---------------------------------------------------


@pytest.fixture
def tokens() -> Tokens:
    return Tokens(SECRET, "HS256")


@pytest.mark.logic
def test_a_valid_token_grants_its_events(tokens: Tokens) -> None:
    grant = tokens.grant(hs256({"exp": soon(), "events": [3, 4]}), time.time())
    assert grant.events == frozenset({3, 4}) and grant.allows(3) and not grant.allows(5)
    assert not grant.allows(None)  # ALL needs "*"
    everything = tokens.grant(hs256({"exp": soon(), "events": "*"}), time.time())
    assert everything.allows(None) and everything.allows(99)


def _none_token() -> str:
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    body = jwt.utils.base64url_encode(json.dumps({"exp": soon(), "events": "*"}).encode())
    return f"{header}.{body.decode()}."


@pytest.mark.logic
@pytest.mark.parametrize(("token", "why"), [
    (None, "required"),
    ("not a jwt", "invalid token"),
    (42, "not a JWT"),
    ("x" * 5000, "not a JWT"),
    (hs256({"exp": int(time.time()) - 60, "events": "*"}), "expired"),
    (hs256({"exp": soon(7200), "nbf": soon(3600), "events": "*"}), "not valid yet"),
    (hs256({"events": "*"}), "invalid token"),                    # no exp
    (hs256({"exp": soon(), "events": "*"}, b"w" * 40), "invalid token"),   # wrong key
    (_none_token(), "invalid token"),                             # alg: none
    (jwt.encode({"exp": soon(), "events": "*"}, SECRET, algorithm="HS512"), "invalid token"),
    (hs256({"exp": soon(), "events": [0]}), '"events"'),
    (hs256({"exp": soon(), "events": ["3"]}), '"events"'),
    (hs256({"exp": soon(), "events": 3}), '"events"'),
    (hs256({"exp": soon()}), '"events"'),
])
def test_anything_else_is_unauthorized(tokens: Tokens, token: Any, why: str) -> None:
    with pytest.raises(TokenError, match=why) as refused:
        tokens.grant(token, time.time())
    assert refused.value.kind == "unauthorized"


@pytest.mark.logic
def test_thirty_seconds_of_leeway(tokens: Tokens) -> None:
    tokens.grant(hs256({"exp": int(time.time()) - 20, "events": "*"}), time.time())


@pytest.mark.logic
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_public_keys_accept_their_algorithm_only(tmp_path: Path, kind: str) -> None:
    if kind == "rsa":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        algorithm = "RS256"
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        algorithm = "ES256"
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "key.pem").write_bytes(pem)
    tokens = from_files(None, str(tmp_path / "key.pem"))
    good = jwt.encode({"exp": soon(), "events": [1]}, private, algorithm=algorithm)
    assert tokens.grant(good, time.time()).allows(1)
    # The classic confusion: HS256 "signed" with the public key as the secret
    # (PyJWT itself refuses to make one, hence the HMAC by hand).
    with pytest.raises(TokenError):
        tokens.grant(_hs256_raw({"exp": soon(), "events": "*"}, pem), time.time())


def _hs256_raw(claims: dict[str, Any], key: bytes) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(signature)


@pytest.mark.logic
def test_options_that_make_no_sense_are_refused(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"too short")
    with pytest.raises(ValueError, match="32 bytes"):
        from_files(str(tmp_path / "short"), None)
    with pytest.raises(ValueError, match="not both"):
        from_files(str(tmp_path / "short"), str(tmp_path / "short"))
    with pytest.raises(ValueError, match="cannot read"):
        from_files(str(tmp_path / "missing"), None)


@pytest.mark.logic
def test_an_expired_grant_has_a_grace_for_a_fresh_token(tokens: Tokens) -> None:
    clock = Clock()
    clock.advance(time.time())
    said: list[str] = []
    access = Access(tokens, clock, None, expired=lambda: said.append("expired"),
                    lapsed=lambda: said.append("lapsed"), grace=30.0)
    access.grant(hs256({"exp": int(clock.seconds()) + 10, "events": [1]}))
    clock.advance(10)
    assert said == ["expired"]
    access.grant(hs256({"exp": int(clock.seconds()) + 600, "events": [1]}))  # in time
    clock.advance(30)
    assert said == ["expired"]  # no lapse: the fresh token holds
    clock.advance(575)  # past the fresh token's exp, within its grace (30 s from exp)
    assert said == ["expired", "expired"]
    clock.advance(30)
    assert said == ["expired", "expired", "lapsed"]


# -- as clients use them ----------------------------------------------------------


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "token.secret"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def guarded(db_dsn: str, tmp_path: Path, secret_file: Path) -> Iterator[Daemon]:
    with Daemon(db_dsn, tmp_path, "--token-secret-file", str(secret_file)) as daemon:
        yield daemon


def seed_close(daemon: Daemon, request: dict[str, Any], url: str = "") -> int | None:
    with connect(daemon.ws_url + url, open_timeout=10) as client:
        client.send(json.dumps(request))
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=10)
    return closed.value.rcvd.code if closed.value.rcvd else None


@pytest.mark.daemon
def test_seed_clients_need_a_token_for_their_event(guarded: Daemon, party: Party) -> None:
    event_id, other = party.event(), party.event()
    assert "tokens: required (HS256)" in guarded.log()
    assert seed_close(guarded, {"event": event_id}) == 4401
    assert seed_close(guarded, {"event": event_id, "token": "nonsense"}) == 4401
    assert seed_close(guarded, {"event": event_id, "token": hs256(
        {"exp": int(time.time()) - 60, "events": [event_id]})}) == 4401
    assert seed_close(guarded, {"event": other, "token": hs256(
        {"exp": soon(), "events": [event_id]})}) == 4403
    assert seed_close(guarded, {"event": "ALL", "token": hs256(
        {"exp": soon(), "events": [event_id]})}) == 4403
    token = hs256({"exp": soon(), "events": [event_id]})
    track_id = party.track()
    for client_url, request in (("", {"event": event_id, "token": token}),
                                (f"/?token={token}", {"event": event_id})):
        with connect(guarded.ws_url + client_url, open_timeout=10) as client:
            client.send(json.dumps(request))
            wait_for(lambda: guarded.health()[1]["channels"], 10, "the subscription")
            party.vote(event_id, track_id)
            assert json.loads(client.recv(timeout=10))["eid"] == event_id
    assert token not in guarded.log(), "a token was logged"


@pytest.mark.daemon
def test_v2_errors_say_why_and_the_connection_stays(guarded: Daemon, party: Party) -> None:
    event_id, other = party.event(), party.event()
    token = hs256({"exp": soon(), "events": [event_id]})
    with connect(guarded.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as client:
        def ask(request: dict[str, Any]) -> dict[str, Any]:
            client.send(json.dumps(request))
            return json.loads(client.recv(timeout=10))

        assert ask({"type": "subscribe", "event": event_id})["error"] == "unauthorized"
        assert ask({"type": "subscribe", "event": other, "token": token})["error"] == \
            "forbidden"
        assert ask({"type": "subscribe", "event": "ALL", "token": token})["error"] == \
            "forbidden"
        assert ask({"type": "auth", "token": "x"})["error"] == "unauthorized"
        authorized = ask({"type": "auth", "token": token})
        assert authorized["type"] == "authorized" and authorized["expires"] > time.time()
        assert ask({"type": "subscribe", "event": event_id})["type"] == "snapshot"


@pytest.mark.daemon
def test_an_expiring_token_is_refreshed_without_losing_a_change(
        guarded: Daemon, party: Party) -> None:
    event_id, track_id = party.event(), party.track()
    short = hs256({"exp": int(time.time()) + 3, "events": [event_id]})
    with connect(guarded.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as client, \
            connect(guarded.ws_url, open_timeout=10) as seed:
        client.send(json.dumps({"type": "subscribe", "event": event_id, "token": short}))
        assert json.loads(client.recv(timeout=10))["type"] == "snapshot"
        seed.send(json.dumps({"event": event_id, "token": short}))
        wait_for(lambda: guarded.health()[1]["channels"], 10, "the subscriptions")
        expired = json.loads(client.recv(timeout=10))
        assert expired == {"type": "token_expired"}
        party.vote(event_id, track_id)  # during the grace: still delivered
        change = json.loads(client.recv(timeout=10))
        assert change["type"] == "change" and change["eid"] == event_id
        client.send(json.dumps({"type": "auth", "token": hs256(
            {"exp": soon(), "events": [event_id]})}))
        assert json.loads(client.recv(timeout=10))["type"] == "authorized"
        party.vote(event_id, track_id, up=False)
        assert [json.loads(client.recv(timeout=10))["type"] for _ in range(2)] == \
            ["change", "change"]
        # A seed client cannot refresh: it is closed at its token's expiry.
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                seed.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


@pytest.mark.daemon
def test_the_event_list_needs_a_token_for_every_event(guarded: Daemon, party: Party) -> None:
    party.event("Listed")

    def status(token: str | None) -> int:
        request = urllib.request.Request(guarded.url + "/api/events")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    assert status(None) == 401
    assert status(hs256({"exp": soon(), "events": [1]})) == 403
    assert status(hs256({"exp": soon(), "events": "*"})) == 200


@pytest.mark.daemon
def test_partysense_db_token_mints_what_the_daemon_accepts(
        guarded: Daemon, party: Party, secret_file: Path) -> None:
    event_id = party.event()
    minted = subprocess.run(
        [sys.executable, "-m", "partysense.cli.dbcli", "token", "--secret-file", str(secret_file),
         "--event", str(event_id), "--ttl", "10m"],
        capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    claims = jwt.decode(minted, SECRET, algorithms=["HS256"])
    assert claims["events"] == [event_id] and 590 <= claims["exp"] - time.time() <= 600
    with connect(guarded.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as client:
        client.send(json.dumps({"type": "subscribe", "event": event_id, "token": minted}))
        assert json.loads(client.recv(timeout=10))["type"] == "snapshot"


@pytest.mark.logic
def test_an_expired_grant_does_not_let_in_a_new_subscription(tokens: Tokens) -> None:
    clock = Clock()
    clock.advance(time.time())
    access = Access(tokens, clock, None, expired=lambda: None, lapsed=lambda: None)
    access.grant(hs256({"exp": int(clock.seconds()) + 10, "events": [1]}))
    assert access.grant().allows(1)  # the connection's grant, while valid
    clock.advance(11)  # expired, within the grace: what is subscribed goes on, nothing new
    with pytest.raises(TokenError, match="required"):
        access.grant()
