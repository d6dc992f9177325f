"""The Django app (partysense/djangoapp) in this test project (tests/djangoproject/):
settings, tokens the daemon accepts, the token view's refusals, the live_board
tag, and the SQL install as a migration that applies and reverses.

pytest-django creates its test database on the suite's PostgreSQL (migrations
run: the stand-in ``event`` app's, then ``partysense_live 0001``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.template import Context, Template
from django.test import RequestFactory

from partysense.db.sqlfiles import INSTALL_SCRIPT, read_sql
from partysense.dialects.tokens import TokenError, Tokens
from partysense.djangoapp.apps import check_settings
from partysense.djangoapp.conf import live_settings
from partysense.djangoapp.guests import live_token
from tests.djangoproject.views import PRIVATE_EVENT

TRIGGERS = {"partysense_vote_insert", "partysense_vote_update", "partysense_vote_delete",
            "partysense_vote_truncate"}


def daemon_tokens() -> Tokens:
    """The daemon's checker, with the secret the settings give the app."""
    return Tokens(live_settings().secret, "HS256")


def board(user: Any, event_id: int, options: str = "") -> str:
    request = RequestFactory().get(f"/events/{event_id}/")
    request.user = user
    template = Template("{% load partysense_live %}{% live_board event_id " + options + " %}")
    return template.render(Context({"request": request, "event_id": event_id}))


def board_config(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json">(.*?)</script>', html, re.S)
    assert found, html
    return dict(json.loads(found.group(1)))


# -- logic: settings and tokens, no database ------------------------------------

@pytest.mark.logic
def test_a_minted_token_is_one_the_daemon_accepts_for_that_event_only(settings: Any) -> None:
    settings.PARTYSENSE_LIVE = {**settings.PARTYSENSE_LIVE, "TOKEN_TTL": 90}
    now = time.time()
    token = live_token(7, now=now)
    assert token is not None
    grant = daemon_tokens().grant(token, now)
    assert grant.allows(7) and not grant.allows(8) and not grant.allows(None)
    assert grant.expires == int(now + 90)
    with pytest.raises(TokenError, match="expired"):
        daemon_tokens().grant(token, now + 90 + 31)  # past exp and the daemon's leeway


@pytest.mark.logic
def test_the_secret_file_is_read_as_the_daemon_reads_it(settings: Any, tmp_path: Path) -> None:
    secret = live_settings().secret
    assert secret is not None
    path = tmp_path / "token.secret"
    path.write_bytes(secret + b"\n")  # a final newline, as editors leave it
    settings.PARTYSENSE_LIVE = {
        **{k: v for k, v in settings.PARTYSENSE_LIVE.items() if k != "TOKEN_SECRET"},
        "TOKEN_SECRET_FILE": str(path), "TOKEN_AUDIENCE": "party"}
    assert live_settings().secret == secret
    token = live_token(3)
    Tokens(secret, "HS256", audience="party").grant(token, time.time())
    with pytest.raises(TokenError, match="audience"):
        daemon_tokens().grant(token, time.time())  # a daemon without --token-audience


@pytest.mark.logic
@pytest.mark.parametrize("change, problem", [
    ({"URL": "live.example"}, "URL"),
    ({"TOKEN_SECRET": "short"}, "32 bytes"),
    ({"TOKEN_SECRET_FILE": "/nonexistent/token.secret"}, "TOKEN_SECRET or TOKEN_SECRET_FILE"),
    ({"TOKEN_TTL": 0}, "TOKEN_TTL"),
    ({"TOKEN_TLL": 60}, "unknown keys"),
])
def test_wrong_settings_say_what_is_wrong(settings: Any, change: dict[str, Any],
                                          problem: str) -> None:
    settings.PARTYSENSE_LIVE = {**settings.PARTYSENSE_LIVE, **change}
    with pytest.raises(ImproperlyConfigured, match=problem):
        live_settings()


@pytest.mark.logic
def test_manage_py_check_reports_wrong_settings(settings: Any) -> None:
    assert check_settings() == []
    settings.PARTYSENSE_LIVE = {**settings.PARTYSENSE_LIVE, "TOKEN_TTL": "10 minutes"}
    assert [(m.id, "TOKEN_TTL" in m.msg) for m in run_checks()
            if m.id.startswith("partysense_live")] == [("partysense_live.E001", True)]


@pytest.mark.logic
@pytest.mark.parametrize("url, client", [
    ("https://live.example", "https://live.example/client.js"),
    ("wss://live.example/", "https://live.example/client.js"),
    ("ws://127.0.0.1:18854", "http://127.0.0.1:18854/client.js"),
])
def test_the_board_imports_the_client_from_the_daemon(settings: Any, url: str,
                                                      client: str) -> None:
    settings.PARTYSENSE_LIVE = {**settings.PARTYSENSE_LIVE, "URL": url}
    assert live_settings().client_url == client


@pytest.mark.logic
def test_the_view_refuses_an_anonymous_guest_unless_the_settings_allow_them(
        client: Any, settings: Any) -> None:
    answer = client.get("/live/events/3/token")
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    assert "no-store" in answer["Cache-Control"]
    assert "token" not in answer.json()

    settings.PARTYSENSE_LIVE = {**settings.PARTYSENSE_LIVE, "ALLOW_ANONYMOUS": True}
    answer = client.get("/live/events/3/token")
    assert answer.status_code == 200
    assert daemon_tokens().grant(answer.json()["token"], time.time()).allows(3)
    # MAY_WATCH still decides, anonymous or not.
    assert client.get(f"/live/events/{PRIVATE_EVENT}/token").status_code == 403
    assert client.post("/live/events/3/token").status_code == 405  # GET only


@pytest.mark.logic
def test_the_board_tells_an_anonymous_guest_to_log_in() -> None:
    html = board(AnonymousUser(), 3)
    assert 'data-state="unauthorized"' in html and "log in" in html
    assert "<script" not in html  # no token, no connection


@pytest.mark.logic
def test_without_a_secret_there_are_no_tokens(client: Any, settings: Any) -> None:
    settings.PARTYSENSE_LIVE = {
        **{k: v for k, v in settings.PARTYSENSE_LIVE.items() if k != "TOKEN_SECRET"},
        "ALLOW_ANONYMOUS": True}
    assert client.get("/live/events/3/token").status_code == 404
    config = board_config(board(AnonymousUser(), 3))
    assert config["token"] is None and config["tokenUrl"] is None


@pytest.mark.logic
def test_the_newest_migration_installs_the_current_sql() -> None:
    """A release that changes sql/install.sql ships a migration that runs it again."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    newest = max(name for app, name in loader.disk_migrations if app == "partysense_live")
    module = importlib.import_module(f"partysense.djangoapp.migrations.{newest}")
    wanted = hashlib.sha256(read_sql(INSTALL_SCRIPT).encode("utf-8")).hexdigest()
    assert module.INSTALL_SHA256 == wanted, (
        f"sql/install.sql changed: add a migration after {newest} that runs it "
        f"(RunSQL as 0001 does) with INSTALL_SHA256 = {wanted!r}")


# -- database: a logged-in guest, the migration ----------------------------------

@pytest.mark.database
@pytest.mark.django_db
def test_a_logged_in_guest_gets_a_token_for_the_event(client: Any) -> None:
    user = User.objects.create_user("guest")
    client.force_login(user)
    answer = client.get("/live/events/5/token")
    assert answer.status_code == 200
    body = answer.json()
    grant = daemon_tokens().grant(body["token"], time.time())
    assert grant.allows(5) and not grant.allows(6)
    assert body["expires"] == grant.expires
    forbidden = client.get(f"/live/events/{PRIVATE_EVENT}/token")
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"

    html = board(user, 5, 'limit=25 nonce="n0nce"')
    assert '<script type="module" nonce="n0nce">' in html
    config = board_config(html)
    assert config["tokenUrl"] == "/live/events/5/token" and config["event"] == 5
    assert config["limit"] == 25 and config["client"] == live_settings().client_url
    assert daemon_tokens().grant(config["token"], time.time()).allows(5)
    assert 'data-state="forbidden"' in board(user, PRIVATE_EVENT)


def installed_triggers() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'event_vote'::regclass "
                       "AND tgname LIKE 'partysense%%'")
        return {name for (name,) in cursor.fetchall()}


def change_log_exists() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('partysense_change') IS NOT NULL")
        return bool(cursor.fetchone()[0])


def vote_is_logged() -> bool:
    """Cast a vote; True if it reached the change log."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO music_artist (name) VALUES ('A') ON CONFLICT DO NOTHING")
        cursor.execute("INSERT INTO event_event (title) VALUES ('E') RETURNING id")
        event_id = cursor.fetchone()[0]
        cursor.execute("INSERT INTO music_track (artist_id, name) "
                       "SELECT id, 'T' FROM music_artist WHERE name = 'A' RETURNING id")
        track_id = cursor.fetchone()[0]
        cursor.execute("INSERT INTO event_vote (event_id, track_id) VALUES (%s, %s)",
                       (event_id, track_id))
        cursor.execute("SELECT count(*) FROM partysense_change WHERE event_id = %s", (event_id,))
        return bool(cursor.fetchone()[0])


@pytest.mark.database
@pytest.mark.django_db(transaction=True)
def test_the_migration_applies_and_reverses() -> None:
    assert installed_triggers() == TRIGGERS and change_log_exists()  # migrated by setup
    try:
        call_command("migrate", "partysense_live", "zero", verbosity=0)
        assert installed_triggers() == set() and not change_log_exists()
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'partysense%%'")
            assert cursor.fetchone()[0] == 0
    finally:
        call_command("migrate", "partysense_live", verbosity=0)
    assert installed_triggers() == TRIGGERS and change_log_exists()
    assert vote_is_logged()


@pytest.mark.database
@pytest.mark.django_db(transaction=True)
def test_partysense_install_repairs_a_dropped_trigger(capsys: pytest.CaptureFixture[str]) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER partysense_vote_insert ON event_vote")
    assert "partysense_vote_insert" not in installed_triggers()
    call_command("partysense_install")
    call_command("partysense_install")  # idempotent
    assert installed_triggers() == TRIGGERS
    assert "installed install.sql" in capsys.readouterr().out
    assert vote_is_logged()
