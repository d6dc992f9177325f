"""The security headers of the page and everything else the port serves
(partysense/web/headers.py): Content-Security-Policy, nosniff, Referrer-Policy,
and framing as --frame-ancestors says."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.python import usage

from harness.daemon import Daemon, wait_for
from partysense.tap import Options
from partysense.web.headers import SecurityHeaders, frame_ancestors_from

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



# The DJ console: frames whatever page its URL names (?src=...).
FRAMING_PAGE = """<!DOCTYPE html><meta charset="utf-8"><title>DJ console</title><body><script>
const frame = document.createElement("iframe");
frame.src = new URLSearchParams(location.search).get("src");
frame.width = 800; frame.height = 600;
document.body.append(frame);
</script>"""


def live_page_in_frame(page: Any, daemon: Daemon) -> bool:
    """The daemon's page is shown in one of ``page``'s frames (its status line is there)."""
    return any(frame.url.startswith(daemon.url) and frame.locator("#status").count() == 1
               for frame in page.frames[1:])


@pytest.mark.browser
def test_chromium_frames_the_page_only_for_the_origins_named(
        db_dsn: str, tmp_path: Path, browser: Any) -> None:
    from tests.test_client_js import serving

    context = browser.new_context()
    try:
        page = context.new_page()
        refusals: list[str] = []
        page.on("console", lambda message: refusals.append(message.text)
                if "frame-ancestors" in message.text else None)
        with serving(FRAMING_PAGE) as console_url:
            console = console_url.rstrip("/")
            with Daemon(db_dsn, tmp_path) as daemon:
                page.goto(f"{console_url}?src={daemon.url}/")
                wait_for(lambda: refusals, 15, "Chromium to refuse the frame (frame-ancestors)")
                assert not live_page_in_frame(page, daemon)
            with Daemon(db_dsn, tmp_path, "--frame-ancestors", console) as daemon:
                page.goto(f"{console_url}?src={daemon.url}/")
                wait_for(lambda: live_page_in_frame(page, daemon), 15, "the page in the frame")
    finally:
        context.close()
