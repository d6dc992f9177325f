"""Shared fixtures: a real PostgreSQL, a fresh database per test, a daemon.

The PostgreSQL is the one named by $PARTYSENSE_TEST_DSN (an admin DSN that
may CREATE DATABASE), or else an embedded one started for the session.
Each test gets its own database cloned from a template that already has the
stand-in schema and the triggers, so tests never see each other's votes.
Nothing here is autouse: PostgreSQL starts only when a test asks for it.

Every test carries exactly one layer marker (setup.cfg), checked at collection:
``logic`` (no PostgreSQL, no process), ``database`` (a real PostgreSQL, no
process), ``daemon`` (twistd or another command as a process), ``browser``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from harness.daemon import Daemon
from partysense.db import sqlfiles
from partysense.db.sqlfiles import execute_autocommit
from tests.support import TEST_SOURCE, Notifications, Party, require_logical_decoding

TEMPLATE = "partysense_test_template"

LAYERS = ("logic", "database", "daemon", "browser")
# Fixtures that start (or need) PostgreSQL or a daemon process; pytest-django's
# database fixtures (and its django_db marker) count too.
DATABASE_FIXTURES = {"admin_dsn", "template_dsn", "db_dsn", "empty_db_dsn", "wal_dsn", "party",
                     "daemon", "db", "transactional_db", "django_db_setup", "live_server",
                     "django_db_reset_sequences", "django_db_serialized_rollback",
                     "admin_user", "admin_client", "django_dsn"}
PROCESS_FIXTURES = {"daemon"}


def pytest_configure(config: pytest.Config) -> None:
    # Several test runs may share this machine; pytest's numbered temp
    # folders are rotated by whichever run starts next, which would delete
    # a running embedded PostgreSQL's data. Each run gets its own folder.
    if not config.option.basetemp:
        config.option.basetemp = tempfile.mkdtemp(prefix="partysense-pytest-")
        config._partysense_basetemp = config.option.basetemp  # type: ignore[attr-defined]


@pytest.hookimpl(tryfirst=True)  # before -m deselects: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test has exactly one layer marker, and a logic test asks for no
    database, a database test for no daemon."""
    problems = []
    for item in items:
        layers = sorted({mark.name for mark in item.iter_markers() if mark.name in LAYERS})
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("django_db") is not None:
            fixtures.add("db")
        if not layers:
            problems.append(f"{item.nodeid}: no layer marker")
        elif len(layers) > 1:
            problems.append(f"{item.nodeid}: {len(layers)} layer markers ({', '.join(layers)})")
        elif layers == ["logic"] and fixtures & DATABASE_FIXTURES:
            problems.append(f"{item.nodeid}: marked logic but uses "
                            f"{sorted(fixtures & DATABASE_FIXTURES)}")
        elif layers == ["database"] and fixtures & PROCESS_FIXTURES:
            problems.append(f"{item.nodeid}: marked database but uses "
                            f"{sorted(fixtures & PROCESS_FIXTURES)}")
    if problems:
        raise pytest.UsageError(
            "each test needs exactly one layer marker of " + ", ".join(LAYERS)
            + " (setup.cfg says what each means; `pytestmark = pytest.mark.<layer>` for a"
            " whole module, `@pytest.mark.<layer>` for one test):\n  "
            + "\n  ".join(problems))


def pytest_unconfigure(config: pytest.Config) -> None:
    basetemp = getattr(config, "_partysense_basetemp", None)
    if basetemp:
        shutil.rmtree(basetemp, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    named = os.environ.get("PARTYSENSE_TEST_DSN")
    if named:
        yield named
        return
    from partysense.db.embedded import start_server, stop_server

    server = start_server(tmp_path_factory.mktemp("embedded") / "pgdata")
    try:
        yield server.get_uri()
    finally:
        stop_server(server)


# The WAL mode's slots (tests of --source wal) keep a database from being
# dropped, even WITH (FORCE): their WAL senders go first, then the slots.
DROP_SLOTS = """
    SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
    WHERE database = %(name)s AND active_pid IS NOT NULL;
    SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
    WHERE database = %(name)s AND NOT active;
"""


def drop_database(admin_dsn: str, name: str) -> None:
    connection = psycopg2.connect(admin_dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            deadline = time.monotonic() + 10
            while True:
                cursor.execute(DROP_SLOTS, {"name": name})
                cursor.execute("SELECT count(*) FROM pg_replication_slots WHERE database = %s",
                               (name,))
                if cursor.fetchone()[0] == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)  # a terminated WAL sender lets its slot go a moment later
    finally:
        connection.close()
    execute_autocommit(admin_dsn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
        sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_dsn(admin_dsn: str) -> Iterator[str]:
    drop_database(admin_dsn, TEMPLATE)
    execute_autocommit(admin_dsn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    dsn = make_dsn(admin_dsn, dbname=TEMPLATE)
    sqlfiles.install(dsn, demo_schema=True)
    yield dsn
    drop_database(admin_dsn, TEMPLATE)


@pytest.fixture
def db_dsn(admin_dsn: str, template_dsn: str) -> Iterator[str]:
    """A fresh database with the schema and triggers installed."""
    name = f"partysense_test_{uuid.uuid4().hex[:12]}"
    execute_autocommit(admin_dsn, sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(TEMPLATE)))
    dsn = make_dsn(admin_dsn, dbname=name)
    if TEST_SOURCE == "wal":  # for daemons that reach it through a proxy (harness/daemon.py)
        sqlfiles.install(dsn, wal=True)
    yield dsn
    drop_database(admin_dsn, name)


@pytest.fixture
def wal_dsn(db_dsn: str) -> str:
    """The fresh database installed for --source wal (sql/wal.sql); skipped, or failed
    under PARTYSENSE_REQUIRE_WAL, on a PostgreSQL without logical decoding. Its slots
    go with it (drop_database)."""
    require_logical_decoding(db_dsn)
    sqlfiles.install(db_dsn, wal=True)
    return db_dsn


@pytest.fixture
def empty_db_dsn(admin_dsn: str) -> Iterator[str]:
    """A fresh database with nothing in it."""
    name = f"partysense_empty_{uuid.uuid4().hex[:12]}"
    execute_autocommit(admin_dsn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_dsn(admin_dsn, dbname=name)
    drop_database(admin_dsn, name)


@pytest.fixture
def party(db_dsn: str) -> Iterator[Party]:
    """Events, tracks and votes in the test database, by plain SQL."""
    with Party(db_dsn) as value:
        yield value


@pytest.fixture
def listen(db_dsn: str) -> Iterator[Any]:
    """``listen(*channels)``: a LISTENing connection to the test database
    (tests.support.Notifications), closed after the test."""
    opened: list[Notifications] = []

    def open_(*channels: str) -> Notifications:
        opened.append(Notifications(db_dsn, *channels))
        return opened[-1]

    yield open_
    for notifications in opened:
        notifications.close()


@pytest.fixture
def daemon(db_dsn: str, tmp_path: Path) -> Iterator[Daemon]:
    """``twistd -n partysense-live`` as a real process, on a port it bound itself."""
    with Daemon(db_dsn, tmp_path) as value:  # with --source wal under TEST_SOURCE=wal
        yield value


# -- the browser tests' Chromium (tests/browser.py) -----------------------------
# Imported when a test asks for them: most tests never start a browser.

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for a test module."""
    from tests.browser import chromium

    with chromium() as value:
        yield value


@pytest.fixture
def screen(browser: Any) -> Iterator[Any]:
    """A 1080p tab on the live page (tests.browser.Screen)."""
    from tests.browser import FULL_HD, Screen

    context = browser.new_context(viewport=FULL_HD)
    try:
        yield Screen(context)
    finally:
        context.close()
