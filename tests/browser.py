"""A real headless Chromium for the page tests: Debian's, driven by Playwright.

Playwright's own browser download is never used (``playwright install``
fetches from the internet); the system ``chromium`` package is. Without it
the browser tests are skipped, unless $PARTYSENSE_REQUIRE_BROWSER is set
(CI sets it): there a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",                     # CI runs as root in a container
    "--disable-gpu",
    "--disable-background-networking",  # nothing but the page talks to the network
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
PHONE = {"width": 360, "height": 740}
FULL_HD = {"width": 1920, "height": 1080}

# The tallies the page shows, read from its rows: {"tid": [up, down]}.
SHOWN_TALLIES = """() => Object.fromEntries(
    Array.from(document.querySelectorAll("#ranking li[data-tid]"),
               (li) => [li.dataset.tid, [Number(li.dataset.up), Number(li.dataset.down)]]))"""


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless Chromium (a Playwright ``Browser``)."""
    executable = chromium_path()
    if executable is None:
        if os.environ.get("PARTYSENSE_REQUIRE_BROWSER"):
            pytest.fail("the browser tests need Debian's chromium (apt-get install chromium)")
        pytest.skip("no chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def as_sql_says(tallies: dict[int, tuple[int, int]]) -> dict[str, list[int]]:
    """``Party.tallies`` in the shape of ``SHOWN_TALLIES``."""
    return {str(tid): [up, down] for tid, (up, down) in tallies.items()}


def screenshot(page: Any, name: str) -> list[Path]:
    """Save the page at phone and full-HD sizes under artifacts/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    saved = []
    for label, size in (("phone", PHONE), ("1080p", FULL_HD)):
        page.set_viewport_size(size)
        path = SCREENSHOTS / f"{name}-{label}.png"
        page.screenshot(path=str(path), animations="disabled")
        saved.append(path)
    return saved
