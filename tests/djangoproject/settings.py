"""Settings of the test project: the PartySense shape (an ``event`` app owning
event_vote), the partysense-live app, and a database on the suite's PostgreSQL
(filled in by :func:`use_postgres` once that is running)."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

from psycopg2.extensions import parse_dsn

HERE = Path(__file__).resolve().parent

SECRET_KEY = secrets.token_urlsafe(50)  # made for this run
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
USE_TZ = True
ROOT_URLCONF = "tests.djangoproject.urls"
STATIC_URL = "static/"  # the live server serves it (nothing there)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "tests.djangoproject.event",
    "partysense.djangoapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [HERE / "templates"],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
    ]},
}]

# Each run its own database name: runs may share $PARTYSENSE_TEST_DSN's server.
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": f"partysense_django_{uuid.uuid4().hex[:8]}",  # pytest-django adds "test_"
}}

PARTYSENSE_LIVE = {
    "URL": "http://127.0.0.1:18854",  # a test names its daemon
    "TOKEN_SECRET": secrets.token_urlsafe(48),  # made for this run
    "TOKEN_TTL": 600,
    "ALLOW_ANONYMOUS": False,
    "MAY_WATCH": "tests.djangoproject.views.may_watch",
}


def use_postgres(admin_dsn: str) -> None:
    """Point the default database at the server of ``admin_dsn`` (in place: Django's
    connections hold this very dict)."""
    from django.conf import settings

    parts = parse_dsn(admin_dsn)
    settings.DATABASES["default"].update({
        "HOST": parts.get("host", ""), "PORT": parts.get("port", ""),
        "USER": parts.get("user", ""), "PASSWORD": parts.get("password", ""),
    })
