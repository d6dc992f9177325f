"""Install this release's sql/install.sql again: notifications signed with a key of
``partysense_key`` (docs/security.md), and ``partysense-db key`` to rotate it.

Idempotent, as every install; reversing it changes nothing (0001's reverse
removes everything, the keys included).
"""

from django.db import migrations

from partysense.db.sqlfiles import INSTALL_LOCK, INSTALL_SCRIPT, read_sql

INSTALL_SHA256 = "fc8e2f8151d2d941321392eea954d6f533d6832888d4126db22cc19fabd1d8fc"


class Migration(migrations.Migration):
    dependencies = [("partysense_live", "0001_install")]

    operations = [
        migrations.RunSQL([INSTALL_LOCK, read_sql(INSTALL_SCRIPT)],
                          reverse_sql=migrations.RunSQL.noop),
    ]
