"""The signed notification's envelope, checked (partysense/core/signature.py); that
PostgreSQL's HMAC is Python's is tests/test_sql_payload.py's (tests/support.py checks
every notification the trigger sends)."""

from __future__ import annotations

import pytest

from partysense.core.signature import (
    UnknownKey,
    Unsigned,
    checked,
    open_envelope,
    payload_of,
    sign,
)

pytestmark = pytest.mark.logic

KEY = bytes(range(32))
PAYLOAD = '{"eid" : 1, "seq" : 7, "track" : "Zoë"}'


def test_a_signed_payload_comes_out_as_it_went_in() -> None:
    text = sign(3, KEY, PAYLOAD)
    assert text.startswith("ps1 3 ") and text.endswith(PAYLOAD)
    assert checked(text, {3: KEY}) == (PAYLOAD, "")
    assert open_envelope(text, {3: KEY}) == PAYLOAD
    assert payload_of(text) == PAYLOAD == payload_of(PAYLOAD)


@pytest.mark.parametrize(("text", "why"), [
    (PAYLOAD, "not signed"),
    ("ps1 3 " + "0" * 64, "a signed envelope without a payload"),
    ("ps1 x3 " + "0" * 64 + " " + PAYLOAD, "the key id is not a number"),
    ("ps1 ٣ " + "0" * 64 + " " + PAYLOAD, "the key id is not a number"),
    ("ps1 3 abc " + PAYLOAD, "the signature is not 64 hex digits"),
    ("ps1 3 " + "0" * 64 + " " + PAYLOAD, "the signature does not match"),
    (sign(3, KEY, PAYLOAD).replace("Zoë", "Zoe"), "the signature does not match"),
    (sign(3, b"another key of 32 bytes, exactly", PAYLOAD), "the signature does not match"),
])
def test_anything_else_is_refused_with_its_reason(text: str, why: str) -> None:
    assert checked(text, {3: KEY}) == (None, why)
    with pytest.raises(Unsigned, match=why):
        open_envelope(text, {3: KEY})


def test_a_key_we_do_not_have_is_told_apart() -> None:
    text = sign(4, KEY, PAYLOAD)
    assert checked(text, {3: KEY}) == (None, "unknown key 4")
    with pytest.raises(UnknownKey) as raised:
        open_envelope(text, {3: KEY})
    assert raised.value.key_id == 4
