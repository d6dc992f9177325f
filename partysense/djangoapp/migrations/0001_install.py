"""Install partysense-live's database side: sql/install.sql, as ``partysense-db install``.

Reversed (``migrate partysense_live zero``) by sql/uninstall.sql. It runs after
the migration that creates ``event_vote``: ``PARTYSENSE_LIVE["MIGRATE_AFTER"]``,
``("event", "__first__")`` by default. A release whose install.sql changes
ships a new migration that runs it again (INSTALL_SHA256 in the newest one is
the script's hash: tests/test_django_app.py holds them to it).
"""

from django.db import migrations

from partysense.db.sqlfiles import INSTALL_LOCK, INSTALL_SCRIPT, UNINSTALL_SCRIPT, read_sql
from partysense.djangoapp.conf import migrate_after

INSTALL_SHA256 = "e51b9ef67154d9b4a1e269fa8c2bdc07431f297ac1952671f54b855770448ae8"


class Migration(migrations.Migration):
    dependencies = migrate_after()

    operations = [
        # Each script is one element of a list: Django sends it as written, in
        # one call, instead of splitting it into statements with sqlparse.
        migrations.RunSQL([INSTALL_LOCK, read_sql(INSTALL_SCRIPT)],
                          reverse_sql=[INSTALL_LOCK, read_sql(UNINSTALL_SCRIPT)]),
    ]
