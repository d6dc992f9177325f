"""A Django migration that installs partysense-live's database side.

Copy it into the app that owns event_vote (say ``event/migrations/``), name
it after the last migration (``0042_partysense_live.py``) and set
``dependencies`` to that migration. partysense-live must be installed in the
Django virtualenv (``pip install partysense-live``), which ships the SQL as
package data. The SQL is idempotent: on every upgrade of partysense-live,
copy this file again under the next number (or run ``partysense-db install``).
"""

from importlib import resources

from django.db import migrations


def install_sql() -> str:
    return resources.files("partysense.sql").joinpath("install.sql").read_text("utf-8")


class Migration(migrations.Migration):
    dependencies = [
        ("event", "0041_previous_migration"),  # the app's latest migration
    ]

    operations = [
        # One element in a list: Django sends the script as written, in one call,
        # instead of splitting it into statements with sqlparse first.
        migrations.RunSQL([install_sql()], reverse_sql=migrations.RunSQL.noop),
    ]
