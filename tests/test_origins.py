"""--allowed-origins matched as Autobahn matched them (partysense/wire/origins.py)."""

from __future__ import annotations

import pytest

from partysense.tap import normalise_origin
from partysense.wire.origins import AllowedOrigins

pytestmark = pytest.mark.logic


def allowed(*entries: str) -> AllowedOrigins:
    return AllowedOrigins(tuple(normalise_origin(entry) for entry in entries))


def test_no_list_allows_every_origin_and_null() -> None:
    anyone = allowed()
    for origin in ("https://evil.example", "null", "file://", None, ""):
        assert anyone.allows(origin)


def test_a_list_allows_its_origins_with_or_without_the_default_port() -> None:
    party = allowed("https://party.example", "http://localhost:8000")
    assert party.allows("https://party.example")
    assert party.allows("https://party.example:443")
    assert party.allows("https://PARTY.example")  # host names are case-blind
    assert party.allows("http://localhost:8000")
    assert party.allows(None)  # no Origin: not a browser
    for origin in ("https://party.example:8443", "http://party.example", "null",
                   "https://party.example.evil.example", "https://evilparty.example",
                   "http://localhost:8001", "file:///home/me/page.html", "not an origin",
                   "https://[::1"):
        assert not party.allows(origin), origin


def test_a_star_stands_for_anything() -> None:
    subdomains = allowed("https://*.party.example:443")
    assert subdomains.allows("https://dj.party.example")
    assert not subdomains.allows("https://party.example.evil.example")
    assert not subdomains.allows("http://dj.party.example")
