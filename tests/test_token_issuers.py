"""Tokens from any issuer: the JWTs another library mints are taken as ours are.

Tokens here are minted with jwcrypto (a second JOSE library, as a Node or
Django issuer would use) as well as PyJWT: an ``aud`` checked against
--token-audience, a numeric ``sub``, the key's own algorithms (P-384 means
ES384, an RSA key takes RS256/384/512 as the header says, never an HMAC), and
the secret file's exact format (its bytes, surrounding whitespace stripped;
or base64 with --token-secret-encoding base64). Keys and secrets are made here.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from jwcrypto import jwk
from jwcrypto import jwt as jwcrypto_jwt
from jwcrypto.common import base64url_encode
from twisted.python import usage
from websockets.sync.client import connect

from harness.daemon import Daemon
from partysense.cli import tokencli
from partysense.dialects.tokens import TokenError, Tokens, from_files
from partysense.tap import Options
from tests.sse import Stream
from tests.support import Party
from tests.test_tokens import _hs256_raw

NOW = 1_800_000_000.0  # the daemon's clock in the logic tests


def claims(**extra: Any) -> dict[str, Any]:
    return {"exp": int(NOW + 600), "iat": int(NOW), "events": [1], **extra}


def jwcrypto_token(key: jwk.JWK, algorithm: str, body: dict[str, Any]) -> str:
    token = jwcrypto_jwt.JWT(header={"alg": algorithm, "typ": "JWT"}, claims=body)
    token.make_signed_token(key)
    return str(token.serialize())


def secret_key(secret: bytes) -> jwk.JWK:
    return jwk.JWK(kty="oct", k=base64url_encode(secret))


def public_key_file(tmp_path: Path, key: jwk.JWK) -> str:
    path = tmp_path / "key.pem"
    path.write_bytes(key.export_to_pem())  # the public half only
    return str(path)


# -- the key decides the algorithms ------------------------------------------------


@pytest.mark.logic
@pytest.mark.parametrize(("kind", "size", "algorithms"), [
    ("EC", "P-256", ["ES256"]),
    ("EC", "P-384", ["ES384"]),
    ("EC", "P-521", ["ES512"]),
    ("RSA", 2048, ["RS256", "RS384", "RS512"]),
])
def test_the_public_key_decides_the_algorithms(tmp_path: Path, kind: str, size: Any,
                                               algorithms: list[str]) -> None:
    key = (jwk.JWK.generate(kty="EC", crv=size) if kind == "EC"
           else jwk.JWK.generate(kty="RSA", size=size))
    tokens = from_files(None, public_key_file(tmp_path, key))
    assert tokens.describe() == f"required ({', '.join(algorithms)})"
    for algorithm in algorithms:
        minted = [jwcrypto_token(key, algorithm, claims(sub=42)),
                  jwt.encode(claims(sub="guest-42"), key.export_to_pem(private_key=True,
                                                                       password=None),
                             algorithm=algorithm)]
        for token in minted:
            assert tokens.grant(token, NOW).allows(1), (algorithm, token)


@pytest.mark.logic
def test_a_public_key_never_lets_the_header_choose_another_family(tmp_path: Path) -> None:
    rsa_key = jwk.JWK.generate(kty="RSA", size=2048)
    pem = rsa_key.export_to_pem()
    tokens = from_files(None, public_key_file(tmp_path, rsa_key))
    for hmac in ("HS256", "HS384", "HS512"):  # the public PEM as an HMAC secret
        forged = jwcrypto_token(secret_key(pem), hmac, claims(events="*"))
        with pytest.raises(TokenError, match="invalid token"):
            tokens.grant(forged, NOW)
    with pytest.raises(TokenError, match="invalid token"):
        tokens.grant(_hs256_raw(claims(events="*"), pem), NOW)
    other = jwk.JWK.generate(kty="EC", crv="P-256")
    with pytest.raises(TokenError, match="invalid token"):
        tokens.grant(jwcrypto_token(other, "ES256", claims()), NOW)
    ec_tokens = from_files(None, public_key_file(tmp_path, jwk.JWK.generate(kty="EC",
                                                                            crv="P-384")))
    with pytest.raises(TokenError, match="invalid token"):  # the curve fixes the algorithm
        ec_tokens.grant(jwcrypto_token(rsa_key, "RS256", claims()), NOW)


@pytest.mark.logic
def test_a_curve_we_do_not_check_is_refused_at_start(tmp_path: Path) -> None:
    key = jwk.JWK.generate(kty="EC", crv="secp256k1")
    with pytest.raises(ValueError, match="P-256, P-384 or P-521"):
        from_files(None, public_key_file(tmp_path, key))


# -- claims other issuers put in ----------------------------------------------------


@pytest.fixture
def secret() -> bytes:
    return secrets.token_bytes(32)


@pytest.mark.logic
@pytest.mark.parametrize("sub", [42, "42", "user:42", 0])
def test_any_sub_is_the_issuers_business(secret: bytes, sub: Any) -> None:
    tokens = Tokens(secret, "HS256")
    token = jwcrypto_token(secret_key(secret), "HS256", claims(sub=sub, jti="a1"))
    assert tokens.grant(token, NOW).allows(1)


@pytest.mark.logic
def test_an_audience_is_checked_when_given(secret: bytes) -> None:
    key = secret_key(secret)
    for_us = jwcrypto_token(key, "HS256", claims(aud="partysense-live"))
    listed = jwcrypto_token(key, "HS256", claims(aud=["api", "partysense-live"]))
    elsewhere = jwcrypto_token(key, "HS256", claims(aud="billing"))
    without = jwcrypto_token(key, "HS256", claims())
    expecting = Tokens(secret, "HS256", audience="partysense-live")
    assert expecting.describe() == "required (HS256; audience partysense-live)"
    assert expecting.grant(for_us, NOW).allows(1) and expecting.grant(listed, NOW).allows(1)
    with pytest.raises(TokenError, match="another audience"):
        expecting.grant(elsewhere, NOW)
    with pytest.raises(TokenError, match='no "aud" claim, which --token-audience requires'):
        expecting.grant(without, NOW)
    # No --token-audience: a token meant for someone is refused, and says how to take it.
    not_expecting = Tokens(secret, "HS256")
    assert not_expecting.grant(without, NOW).allows(1)
    with pytest.raises(TokenError, match="only when started with --token-audience"):
        not_expecting.grant(for_us, NOW)


@pytest.mark.logic
def test_times_are_the_daemons_clock_and_must_be_numbers(secret: bytes) -> None:
    key = secret_key(secret)
    tokens = Tokens(secret, "HS256")
    token = jwcrypto_token(key, "HS256", claims())
    assert tokens.grant(token, NOW + 600 + 29).expires == NOW + 600  # within the leeway
    with pytest.raises(TokenError, match="expired") as expired:
        tokens.grant(token, NOW + 600 + 30)
    assert expired.value.expired
    with pytest.raises(TokenError, match="not valid yet"):
        tokens.grant(jwcrypto_token(key, "HS256", claims(nbf=int(NOW + 60))), NOW)
    with pytest.raises(TokenError, match='"exp" must be a number'):
        tokens.grant(jwcrypto_token(key, "HS256", claims(exp="soon")), NOW)


# -- the secret file ------------------------------------------------------------------


@pytest.mark.logic
def test_the_secret_file_is_its_bytes_with_surrounding_whitespace_stripped(
        tmp_path: Path, secret: bytes) -> None:
    text = base64url_encode(secret).encode("ascii")  # printable, as most recipes make
    (tmp_path / "secret").write_bytes(b"  " + text + b"\n")
    tokens = from_files(str(tmp_path / "secret"), None)
    # An issuer that reads the file the documented way (strip it) signs with the same.
    assert tokens.grant(jwcrypto_token(secret_key(text), "HS256", claims()), NOW).allows(1)
    with pytest.raises(TokenError):  # one that keeps the newline does not
        tokens.grant(jwcrypto_token(secret_key(text + b"\n"), "HS256", claims()), NOW)


@pytest.mark.logic
@pytest.mark.parametrize("encode", [
    lambda raw: base64.b64encode(raw) + b"\n",                       # base64 > file
    lambda raw: base64.encodebytes(raw),                            # wrapped at 76 columns
    lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"="),         # a JWK's "k"
])
def test_a_base64_secret_is_decoded(tmp_path: Path, encode: Any) -> None:
    raw = secrets.token_bytes(64)
    (tmp_path / "secret").write_bytes(encode(raw))
    tokens = from_files(str(tmp_path / "secret"), None, secret_encoding="base64")
    assert tokens.grant(jwcrypto_token(secret_key(raw), "HS256", claims()), NOW).allows(1)
    assert tokens.grant(jwt.encode(claims(), raw, algorithm="HS256"), NOW).allows(1)


@pytest.mark.logic
def test_secret_options_that_make_no_sense_are_refused(tmp_path: Path) -> None:
    (tmp_path / "not-base64").write_bytes(b"this is not base64!\n" * 3)
    (tmp_path / "short").write_bytes(base64.b64encode(secrets.token_bytes(16)))
    with pytest.raises(ValueError, match="not base64"):
        from_files(str(tmp_path / "not-base64"), None, secret_encoding="base64")
    with pytest.raises(ValueError, match="32 bytes"):
        from_files(str(tmp_path / "short"), None, secret_encoding="base64")
    for arguments, why in [
        (["--token-secret-encoding", "hex", "--token-secret-file", "x"], "raw or base64"),
        (["--token-secret-encoding", "base64"], "about --token-secret-file"),
        (["--token-audience", "partysense-live"], "needs --token-secret-file"),
        (["--token-secret-file", str(tmp_path / "short"), "--token-audience", " "],
         "cannot be empty"),
    ]:
        with pytest.raises(usage.UsageError, match=why):
            Options().parseOptions(["--dsn", "dbname=x", *arguments])


@pytest.mark.logic
def test_partysense_db_token_follows_the_daemons_options(tmp_path: Path) -> None:
    raw = secrets.token_bytes(48)
    (tmp_path / "secret").write_bytes(base64.b64encode(raw) + b"\n")
    parser = argparse.ArgumentParser()
    tokencli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["token", "--secret-file", str(tmp_path / "secret"),
                              "--secret-encoding", "base64", "--audience", "partysense-live",
                              "--event", "3", "--ttl", "10m"])
    out = io.StringIO()
    assert tokencli.run(args, out=out) == 0
    minted = out.getvalue().strip()
    daemon_tokens = from_files(str(tmp_path / "secret"), None, secret_encoding="base64",
                               audience="partysense-live")
    assert daemon_tokens.grant(minted, time.time()).events == frozenset({3})
    checked = jwcrypto_jwt.JWT(key=secret_key(raw), jwt=minted, algs=["HS256"])
    assert json.loads(checked.claims)["aud"] == "partysense-live"


# -- a real daemon ----------------------------------------------------------------------


@pytest.fixture
def p384(tmp_path: Path) -> jwk.JWK:
    return jwk.JWK.generate(kty="EC", crv="P-384")


@pytest.fixture
def ec_daemon(db_dsn: str, tmp_path: Path, p384: jwk.JWK) -> Iterator[Daemon]:
    with Daemon(db_dsn, tmp_path, "--token-public-key-file", public_key_file(tmp_path, p384),
                "--token-audience", "partysense-live") as daemon:
        yield daemon


@pytest.mark.daemon
def test_a_p384_key_means_es384_with_an_audience(ec_daemon: Daemon, p384: jwk.JWK,
                                                  party: Party) -> None:
    assert "tokens: required (ES384; audience partysense-live)" in ec_daemon.log()
    event_id = party.event()
    now = time.time()
    token = jwcrypto_token(p384, "ES384", {"exp": int(now + 600), "iat": int(now), "sub": 42,
                                           "aud": "partysense-live", "events": [event_id]})
    with connect(ec_daemon.ws_url, subprotocols=["partysense.v2"], open_timeout=10) as client:
        def ask(body: dict[str, Any]) -> dict[str, Any]:
            client.send(json.dumps(body))
            return dict(json.loads(client.recv(timeout=10)))

        assert ask({"type": "subscribe", "event": event_id, "token": token})["type"] == \
            "snapshot"
        other = jwcrypto_token(p384, "ES384", {"exp": int(now + 600), "events": [event_id],
                                               "aud": "billing"})
        refused = ask({"type": "auth", "token": other})
        assert refused["error"] == "unauthorized" and "audience" in refused["message"]
    stream = Stream(ec_daemon.port, f"/events/{event_id}/stream?token={token}")
    assert stream.status == 200
    stream.close()


@pytest.mark.daemon
def test_a_base64_secret_and_an_audience_for_the_daemon_and_its_cli(
        db_dsn: str, tmp_path: Path, party: Party) -> None:
    raw = secrets.token_bytes(48)
    secret_file = tmp_path / "token.secret"
    secret_file.write_bytes(base64.b64encode(raw) + b"\n")  # the docs' recipe
    options = ["--token-secret-file", str(secret_file), "--token-secret-encoding", "base64",
               "--token-audience", "partysense-live"]
    event_id = party.event()
    minted = subprocess.run(
        [sys.executable, "-m", "partysense.cli.dbcli", "token", "--secret-file", str(secret_file),
         "--secret-encoding", "base64", "--audience", "partysense-live",
         "--event", str(event_id), "--ttl", "10m"],
        capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    now = time.time()
    elsewhere = jwcrypto_token(secret_key(raw), "HS256", {
        "exp": int(now + 600), "sub": 7, "aud": "partysense-live", "events": [event_id]})
    with Daemon(db_dsn, tmp_path, *options) as daemon:
        assert "tokens: required (HS256; audience partysense-live)" in daemon.log()
        for token in (minted, elsewhere):
            with connect(daemon.ws_url, subprotocols=["partysense.v2"],
                         open_timeout=10) as client:
                client.send(json.dumps({"type": "subscribe", "event": event_id,
                                        "token": token}))
                assert json.loads(client.recv(timeout=10))["type"] == "snapshot"
