"""The security headers of the page and everything else the port serves
(partysense/headers.py): Content-Security-Policy, nosniff, Referrer-Policy,
and framing as --frame-ancestors says."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from twisted.python import usage

from harness.daemon import Daemon
from partysense.headers import SecurityHeaders, frame_ancestors_from
from partysense.tap import Options

# The page, its client module (versioned or not), a static file, JSON, an error.
PATHS = ["/", "/?event=3", "/client.js", "/static/app.js", "/static/style.css",
         "/api/events", "/healthz", "/no-such-page"]


def headers_of(url: str) -> dict[str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return {name.lower(): value for name, value in answer.headers.items()}
    except urllib.error.HTTPError as error:  # 404: its headers count too
        return {name.lower(): value for name, value in error.headers.items()}


def directives(policy: str) -> dict[str, str]:
    """A Content-Security-Policy as {directive: its sources}."""
    parts = (part.strip().split(None, 1) for part in policy.split(";") if part.strip())
    return {part[0]: part[1] if len(part) > 1 else "" for part in parts}


@pytest.mark.daemon
def test_every_answer_says_what_the_browser_may_do(daemon: Daemon) -> None:
    for path in PATHS:
        headers = headers_of(daemon.url + path)
        assert headers.get("x-content-type-options") == "nosniff", path
        assert headers.get("referrer-policy") == "no-referrer", path  # ?token= stays here
        assert headers.get("x-frame-options") == "DENY", path
        policy = directives(headers.get("content-security-policy", ""))
        assert policy.get("default-src") == "'none'", path
        assert policy.get("script-src") == "'self'", path
        # 'self' covers the page's own ws:/wss: (CSP Level 3), and no other host.
        assert policy.get("connect-src") == "'self'", path
        assert policy.get("frame-ancestors") == "'none'", path
        assert policy.get("base-uri") == "'none'", path
    # The JSON says it is JSON, and nosniff holds the browser to it.
    assert headers_of(daemon.url + "/api/events")["content-type"] == "application/json"


@pytest.mark.daemon
def test_frame_ancestors_lets_the_dj_console_frame_the_page(
        db_dsn: str, tmp_path: Path) -> None:
    with Daemon(db_dsn, tmp_path, "--frame-ancestors",
                "https://dj.example, 'self'") as daemon:
        for path in ("/", "/client.js", "/static/style.css"):
            headers = headers_of(daemon.url + path)
            policy = directives(headers["content-security-policy"])
            assert policy["frame-ancestors"] == "https://dj.example 'self'", path
            # X-Frame-Options cannot name an origin: DENY would overrule the list
            # in old browsers, so it is left out and frame-ancestors decides.
            assert "x-frame-options" not in headers, path
            assert headers["x-content-type-options"] == "nosniff", path
        assert "the page may be framed by: https://dj.example 'self'" in daemon.log()
    with Daemon(db_dsn, tmp_path, "--frame-ancestors", "'self'") as daemon:
        headers = headers_of(daemon.url + "/")
        assert headers["x-frame-options"] == "SAMEORIGIN"
        assert directives(headers["content-security-policy"])["frame-ancestors"] == "'self'"


@pytest.mark.logic
def test_frame_ancestors_accepts_sources_and_refuses_anything_else() -> None:
    assert frame_ancestors_from("'none'") == ("'none'",)
    assert frame_ancestors_from("self") == ("'self'",)  # the shell ate the quotes
    assert frame_ancestors_from("https://dj.example/ https://*.party.example:8443") == (
        "https://dj.example", "https://*.party.example:8443")
    for bad in ("", "https://dj.example; script-src *", "javascript:alert(1)",
                "'none' https://dj.example", "*", "dj.example", "https://dj.example/path"):
        with pytest.raises(ValueError):
            frame_ancestors_from(bad)
    with pytest.raises(usage.UsageError, match="frame-ancestors"):
        Options().parseOptions(["--frame-ancestors", "https://a.example;default-src *"])
    assert SecurityHeaders().frame_options == "DENY"
    assert dict(SecurityHeaders(("'self'",)).items())[b"x-frame-options"] == b"SAMEORIGIN"
