"""A small Django project, and the Django app's tests (test_*.py here).

Importing this package (pytest does, before collecting a test here) configures
Django with ``tests.djangoproject.settings`` (unless DJANGO_SETTINGS_MODULE
names another) and sets it up, so only a run that collects the Django tests
has Django configured; pytest-django then creates its test database on the
suite's PostgreSQL (``django_db_modify_db_settings`` in conftest.py here).
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djangoproject.settings")
django.setup()
