"""The signed notification: what the trigger sends, and how the daemon believes it.

Any role that can connect may NOTIFY any channel, so a notification's text
proves nothing by itself. The trigger (sql/install.sql, ``partysense_record``)
therefore wraps each change's payload in an envelope signed with a key that
only the trigger's owner and the daemon's role can read (``partysense_key``)::

    ps1 <key id> <HMAC-SHA256 of the payload, 64 hex digits> <payload>

A notification whose envelope checks out is the change itself: the daemon
passes it on without reading the change log (partysense/db/listener.py). One
that does not (no envelope, a bad signature, a key we do not know) is never
passed on. The payload is the JSON every client gets, byte for byte the seed
frame, and byte for byte what a read of the log rebuilds.

HMAC-SHA256 because PostgreSQL can compute it with nothing but core functions
(``sha256()``, since version 11): the key's inner and outer pads are stored
beside it, so the trigger needs no extension. See docs/security.md.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

PREFIX = "ps1 "
_MAC_LENGTH = 64  # hex digits of a SHA-256
# A key id is a positive integer the install numbers from 1; more digits than
# this is not one of ours, and not worth converting.
_MAX_KEY_DIGITS = 9


class Unsigned(ValueError):
    """Not a notification our trigger signed (or not with a key it has)."""


class UnknownKey(Unsigned):
    """Signed, well formed, but with a key id we do not have (yet: a new key?)."""

    def __init__(self, key_id: int) -> None:
        super().__init__(f"signed with key {key_id}, which this daemon does not have")
        self.key_id = key_id


def open_envelope(text: str, keys: Mapping[int, bytes]) -> str:
    """The payload of a notification signed with one of ``keys``.

    Raises :class:`UnknownKey` for a key id not in ``keys``, :class:`Unsigned`
    (saying what is wrong) for anything else that is not our envelope.
    """
    payload, why = checked(text, keys)
    if payload is not None:
        return payload
    if why.startswith(_UNKNOWN_KEY):
        raise UnknownKey(int(why[len(_UNKNOWN_KEY):]))
    raise Unsigned(why)


_UNKNOWN_KEY = "unknown key "


def checked(text: str, keys: Mapping[int, bytes]) -> tuple[str | None, str]:
    """(the payload, "") of a notification signed with one of ``keys``, else (None, why).

    No exception: a flood of forged notifications costs a few string checks
    each (and one HMAC, for those that look signed).
    """
    if not text.startswith(PREFIX):
        return None, "not signed"
    parts = text.split(" ", 3)
    if len(parts) != 4:
        return None, "a signed envelope without a payload"
    _, key_text, mac, payload = parts
    if not (key_text.isascii() and key_text.isdigit() and len(key_text) <= _MAX_KEY_DIGITS):
        return None, "the key id is not a number"
    key = keys.get(int(key_text))
    if key is None:
        return None, f"{_UNKNOWN_KEY}{int(key_text)}"
    if len(mac) != _MAC_LENGTH:
        return None, "the signature is not 64 hex digits"
    if not hmac.compare_digest(mac, signature(key, payload)):
        return None, "the signature does not match"
    return payload, ""


def signature(key: bytes, payload: str) -> str:
    """HMAC-SHA256 of ``payload``'s UTF-8 bytes, as the trigger writes it (hex)."""
    # hmac.digest: one C call (hmac.new builds two hash objects in Python first).
    return hmac.digest(key, payload.encode("utf-8", "surrogatepass"), "sha256").hex()


def sign(key_id: int, key: bytes, payload: str) -> str:
    """The envelope the trigger would send (for tools and tests that play the database)."""
    return f"{PREFIX}{key_id} {signature(key, payload)} {payload}"


def payload_of(text: str) -> str:
    """The payload, whether or not it is in an envelope, unchecked (for a human's tail)."""
    if text.startswith(PREFIX):
        parts = text.split(" ", 3)
        if len(parts) == 4:
            return parts[3]
    return text
