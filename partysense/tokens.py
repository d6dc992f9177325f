"""Signed access tokens: which events a client may watch, and until when.

With ``--token-secret-file`` (HS256) or ``--token-public-key-file`` (RS256
or ES256, from the PEM's key type) every subscription needs a JSON Web Token
(RFC 7519), checked with PyJWT:

    {"exp": 1767225600, "events": [3, 4]}      events 3 and 4 until exp
    {"exp": 1767225600, "events": "*"}         every event, and the firehose

``exp`` is required; ``nbf`` and ``iat`` are honoured when present; 30 s of
leeway for clocks that disagree. Only the configured algorithm is accepted:
a token signed ``none``, or HS256 with the public key as its secret, is
refused. With neither option the daemon is public (``OPEN``), as before.
docs/security.md has the format, and a Django view that mints one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from partysense.channels import MAX_EVENT_ID

LEEWAY = 30.0
MAX_TOKEN_BYTES = 2048  # a token past this is refused unread
MAX_EVENTS = 1000       # ids one token may name


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
    """Checks tokens with one key and one algorithm; ``required`` says if they are needed."""

    def __init__(self, key: Any = None, algorithm: str | None = None) -> None:
        self._key = key
        self._algorithm = algorithm
        self.required = algorithm is not None

    def describe(self) -> str:
        return f"required ({self._algorithm})" if self.required else "none: every event is public"

    def grant(self, token: Any, now: float) -> Grant:
        """The token's grant; TokenError("unauthorized") if it is missing or not valid."""
        if not self.required:
            return EVERYTHING
        if token is None:
            raise TokenError("unauthorized", "a token is required")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
            raise TokenError("unauthorized", "the token is not a JWT")
        try:
            assert self._algorithm is not None
            claims = jwt.decode(token, self._key, algorithms=[self._algorithm],
                                leeway=LEEWAY, options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("unauthorized", "the token has expired", expired=True) from None
        except jwt.ImmatureSignatureError:
            raise TokenError("unauthorized", "the token is not valid yet") from None
        except jwt.InvalidTokenError as error:
            raise TokenError("unauthorized", f"invalid token ({_short(error)})") from None
        return Grant(events=_events(claims.get("events")), expires=float(claims["exp"]))


OPEN = Tokens()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, if any."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def from_files(secret_file: str | None, public_key_file: str | None) -> Tokens:
    """The daemon's Tokens from its options; ValueError says what is wrong."""
    if secret_file and public_key_file:
        raise ValueError("give --token-secret-file or --token-public-key-file, not both")
    if secret_file:
        return Tokens(read_secret(secret_file), "HS256")
    if public_key_file:
        key = load_pem_public_key(_read(public_key_file))
        if isinstance(key, rsa.RSAPublicKey):
            return Tokens(key, "RS256")
        if isinstance(key, ec.EllipticCurvePublicKey):
            return Tokens(key, "ES256")
        raise ValueError("the public key must be an RSA or an EC (P-256) key")
    return OPEN


def read_secret(path: str) -> bytes:
    """The HS256 secret in ``path``; ValueError if unreadable or under 32 bytes."""
    secret = _read(path).strip()
    if len(secret) < 32:
        raise ValueError("the token secret must be at least 32 bytes (256 bits)")
    return secret


def mint(secret: bytes, events: list[int] | None, ttl: float, now: float) -> str:
    """An HS256 token for ``events`` (None: every event), valid ``ttl`` seconds from now."""
    claims: dict[str, Any] = {"events": "*" if events is None else sorted(set(events)),
                              "iat": int(now), "exp": int(now + ttl)}
    return jwt.encode(claims, secret, algorithm="HS256")


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
