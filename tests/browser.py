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
from playwright.sync_api import Locator, expect, sync_playwright

from harness.daemon import Daemon, wait_for

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


SECONDS = 1000  # Playwright counts in milliseconds


class Screen:
    """One browser tab on the live page, and what went wrong in it."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.page = context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        self.page.on("dialog", self._dialog)
        # The page's Content-Security-Policy forbids inline script: a blocked
        # attempt would show here even though it did not run.
        self.page.on("console", lambda message: self.problems.append(message.text)
                     if "Content Security Policy" in message.text else None)

    def _dialog(self, dialog: Any) -> None:
        self.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    def open(self, daemon: Daemon, event: int | str) -> None:
        self.page.goto(f"{daemon.url}/?event={event}")

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    def expect_state(self, state: str, timeout: float = 15 * SECONDS) -> None:
        expect(self.status).to_have_attribute("data-state", state, timeout=timeout)

    def row(self, track_id: int) -> Locator:
        return self.page.locator(f'#ranking li[data-tid="{track_id}"]')

    @property
    def feed(self) -> Locator:
        return self.page.locator("#feed li")

    def shown_tallies(self) -> dict[str, list[int]]:
        return dict(self.page.evaluate(SHOWN_TALLIES))

    def expect_tallies(self, tallies: dict[int, tuple[int, int]], timeout: float = 15.0) -> None:
        """Wait until the page shows exactly ``tallies`` (``Party.tallies``)."""
        wanted = as_sql_says(tallies)
        try:
            wait_for(lambda: self.shown_tallies() == wanted, timeout, "the page's tallies")
        except AssertionError:
            raise AssertionError(
                f"the page shows {self.shown_tallies()}, SQL says {wanted}") from None
