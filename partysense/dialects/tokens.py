"""Signed access tokens: which events a client may watch, and until when.

With ``--token-secret-file`` (HS256) or ``--token-public-key-file`` every
subscription needs a JSON Web Token (RFC 7519), checked with PyJWT:

    {"exp": 1767225600, "events": [3, 4]}      events 3 and 4 until exp
    {"exp": 1767225600, "events": "*"}         every event, and the firehose

``exp`` is required; ``nbf`` and ``iat`` are honoured when present, all three
on the daemon's clock with 30 s of leeway for clocks that disagree. ``sub``,
``jti`` and ``iss`` are the issuer's business (a numeric ``sub`` is fine).
``aud`` is checked against ``--token-audience``; a token with an ``aud`` is
refused when that option is not given (RFC 7519 4.1.3).

Only the key's own algorithms are accepted: HS256 for a secret; RS256,
RS384 and RS512 for an RSA public key (the token's header picks one of
them); ES256, ES384 or ES512 for an EC public key, by its curve (P-256,
P-384, P-521). A token signed ``none``, or with HMAC and the public key as
its secret, is refused. With neither option the daemon is public (``OPEN``).
docs/security.md has the format, the secret file's, and a Django view.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from partysense.core.channels import MAX_EVENT_ID

LEEWAY = 30.0
MAX_TOKEN_BYTES = 2048  # a token past this is refused unread
MAX_EVENTS = 1000       # ids one token may name
RSA_ALGORITHMS = ("RS256", "RS384", "RS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
SECRET_ENCODINGS = ("raw", "base64")


class TokenError(Exception):
    """A token that does not let its bearer in: ``unauthorized`` or ``forbidden``.

    ``expired``: refused only because its ``exp`` has passed (an SSE request
    says ``token_expired`` then, so that its client knows to get a fresh one).
    """

    def __init__(self, kind: str, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True)
class Grant:
    """What a token allows: some events (None: every event and the firehose), until when."""

    events: frozenset[int] | None
    expires: float  # epoch seconds; inf for the open door

    def allows(self, event_id: int | None) -> bool:
        if self.events is None:
            return True
        return event_id is not None and event_id in self.events

    def check(self, event_id: int | None) -> None:
        if not self.allows(event_id):
            what = "every event" if event_id is None else f"event {event_id}"
            raise TokenError("forbidden", f"the token does not give access to {what}")


EVERYTHING = Grant(events=None, expires=math.inf)


class Tokens:
    """Checks tokens with one key, its algorithms and maybe an audience;
    ``required`` says if tokens are needed at all."""

    def __init__(self, key: Any = None, algorithms: str | Sequence[str] | None = None,
                 audience: str | None = None) -> None:
        self._key = key
        if isinstance(algorithms, str):
            algorithms = (algorithms,)
        self._algorithms = tuple(algorithms or ())
        self._audience = audience
        self.required = bool(self._algorithms)

    def describe(self) -> str:
        if not self.required:
            return "none: every event is public"
        audience = f"; audience {self._audience}" if self._audience else ""
        return f"required ({', '.join(self._algorithms)}{audience})"

    def grant(self, token: Any, now: float) -> Grant:
        """The token's grant at ``now`` (epoch seconds); TokenError("unauthorized")
        if it is missing or not valid."""
        if not self.required:
            return EVERYTHING
        if token is None:
            raise TokenError("unauthorized", "a token is required")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
            raise TokenError("unauthorized", "the token is not a JWT")
        try:
            # The times are checked below, on the daemon's clock (``now``).
            claims = jwt.decode(token, self._key, algorithms=list(self._algorithms),
                                audience=self._audience,
                                options={"require": ["exp"], "verify_exp": False,
                                         "verify_nbf": False, "verify_iat": False,
                                         "verify_sub": False})
        except jwt.InvalidAudienceError:
            raise TokenError("unauthorized", self._audience_refusal()) from None
        except jwt.MissingRequiredClaimError as error:
            if error.claim == "aud":
                raise TokenError("unauthorized", 'the token has no "aud" claim, which '
                                                 "--token-audience requires") from None
            raise TokenError("unauthorized", f"invalid token ({_short(error)})") from None
        except jwt.InvalidTokenError as error:
            raise TokenError("unauthorized", f"invalid token ({_short(error)})") from None
        return Grant(events=_events(claims.get("events")), expires=_check_times(claims, now))

    def _audience_refusal(self) -> str:
        if self._audience is None:
            return ('the token names an audience ("aud"); the daemon accepts one only '
                    "when started with --token-audience")
        return 'the token is meant for another audience (its "aud" is not --token-audience)'


OPEN = Tokens()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, if any."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def from_files(secret_file: str | None, public_key_file: str | None,
               secret_encoding: str = "raw", audience: str | None = None) -> Tokens:
    """The daemon's Tokens from its options; ValueError says what is wrong."""
    if secret_file and public_key_file:
        raise ValueError("give --token-secret-file or --token-public-key-file, not both")
    if secret_encoding != "raw" and not secret_file:
        raise ValueError("--token-secret-encoding is about --token-secret-file")
    if audience is not None and not audience.strip():
        raise ValueError("--token-audience cannot be empty")
    if secret_file:
        return Tokens(read_secret(secret_file, secret_encoding), "HS256", audience)
    if public_key_file:
        key = load_pem_public_key(_read(public_key_file))
        return Tokens(key, public_key_algorithms(key), audience)
    if audience is not None:
        raise ValueError("--token-audience needs --token-secret-file or "
                         "--token-public-key-file")
    return OPEN


def public_key_algorithms(key: Any) -> tuple[str, ...]:
    """The algorithms a public key checks: never an HMAC (its PEM is no secret)."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise ValueError(f"the EC public key is on {key.curve.name}; use P-256, P-384 "
                             "or P-521 (ES256, ES384, ES512)")
        return (algorithm,)
    raise ValueError("the public key must be an RSA or an EC (P-256, P-384, P-521) key")


def read_secret(path: str, encoding: str = "raw") -> bytes:
    """The HS256 secret in ``path``: its bytes with surrounding whitespace (a final
    newline) stripped, decoded from base64 (or base64url) if ``encoding`` says so.
    ValueError if unreadable, not that encoding, or under 32 bytes."""
    if encoding not in SECRET_ENCODINGS:
        raise ValueError(f"--token-secret-encoding must be one of {', '.join(SECRET_ENCODINGS)}")
    return parse_secret(_read(path), encoding)


def parse_secret(text: bytes, encoding: str = "raw") -> bytes:
    """The HS256 secret that ``text`` holds, as ``read_secret`` reads a file's bytes:
    stripped, decoded from base64 if ``encoding`` says so, at least 32 bytes."""
    if encoding not in SECRET_ENCODINGS:
        raise ValueError(f"the secret encoding must be one of {', '.join(SECRET_ENCODINGS)}")
    secret = text.strip()
    if encoding == "base64":
        secret = _from_base64(secret)
    if len(secret) < 32:
        raise ValueError("the token secret must be at least 32 bytes (256 bits)")
    return secret


def mint(secret: bytes, events: list[int] | None, ttl: float, now: float,
         audience: str | None = None) -> str:
    """An HS256 token for ``events`` (None: every event), valid ``ttl`` seconds from now."""
    claims: dict[str, Any] = {"events": "*" if events is None else sorted(set(events)),
                              "iat": int(now), "exp": int(now + ttl)}
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def _check_times(claims: dict[str, Any], now: float) -> float:
    """The token's exp, once exp, nbf and iat agree with ``now`` (LEEWAY apart)."""
    expires = _seconds(claims, "exp")
    if expires + LEEWAY <= now:
        raise TokenError("unauthorized", "the token has expired", expired=True)
    for name in ("nbf", "iat"):
        if name in claims and _seconds(claims, name) - LEEWAY > now:
            raise TokenError("unauthorized", "the token is not valid yet")
    return expires


def _seconds(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    if type(value) not in (int, float) or not math.isfinite(value):
        raise TokenError("unauthorized",
                         f'invalid token (its "{name}" must be a number of seconds)')
    return float(value)


def _from_base64(text: bytes) -> bytes:
    # base64 or base64url (JWK "k"), padded or not, wrapped (base64's 76 columns) or not.
    text = b"".join(text.split()).replace(b"-", b"+").replace(b"_", b"/")
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the token secret file is not base64 (--token-secret-encoding "
                         "base64)") from None


def _events(claim: Any) -> frozenset[int] | None:
    if claim == "*":
        return None
    if (not isinstance(claim, list) or len(claim) > MAX_EVENTS
            or not all(type(e) is int and 1 <= e <= MAX_EVENT_ID for e in claim)):
        raise TokenError("unauthorized",
                         'the token\'s "events" must be a list of event ids, or "*"')
    return frozenset(claim)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:80] if str(error) else type(error).__name__
