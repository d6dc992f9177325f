"""Install this release's sql/install.sql again: notifications signed with a key of
``partysense_key`` (docs/security.md), and ``partysense-db key`` to rotate it.

Idempotent, as every install; reversing it changes nothing (0001's reverse
removes everything, the keys included).
"""

from django.db import migrations

from partysense.db.sqlfiles import INSTALL_LOCK, INSTALL_SCRIPT, read_sql

INSTALL_SHA256 = "14b0fb1ebcf5d07f5a79432496a84fe284f560c38bc7b0cf0183d5188fa4b856"


class Migration(migrations.Migration):
    dependencies = [("partysense_live", "0001_install")]

    operations = [
        migrations.RunSQL([INSTALL_LOCK, read_sql(INSTALL_SCRIPT)],
                          reverse_sql=migrations.RunSQL.noop),
    ]
