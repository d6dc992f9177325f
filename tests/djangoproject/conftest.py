"""Fixtures of the Django app's tests: pytest-django's database on the suite's PostgreSQL."""

from __future__ import annotations

import pytest
from psycopg2.extensions import make_dsn

from tests.djangoproject.settings import use_postgres


@pytest.fixture(scope="session")
def django_db_modify_db_settings(admin_dsn: str) -> None:
    """pytest-django's hook, before it creates its test database: on our PostgreSQL."""
    use_postgres(admin_dsn)


@pytest.fixture
def django_dsn(admin_dsn: str, django_db_setup: None) -> str:
    """A libpq DSN of pytest-django's test database (for the daemon, Party, Voter)."""
    from django.db import connection

    return make_dsn(admin_dsn, dbname=connection.settings_dict["NAME"])
