"""Install this release's sql/install.sql again: ``partysense_notified_payload`` in
PL/pgSQL, planned once a session instead of in every voter's transaction (the
same payloads, byte for byte; docs/performance.md).

Idempotent, as every install; reversing it changes nothing (0001's reverse
removes everything).
"""

from django.db import migrations

from partysense.db.sqlfiles import INSTALL_LOCK, INSTALL_SCRIPT, read_sql

INSTALL_SHA256 = "a7da68de8d11a5a79cfb3093cbe9c7e72d70ac9452e49f5d5cce19a69b1a3250"


class Migration(migrations.Migration):
    dependencies = [("partysense_live", "0002_signed_notifications")]

    operations = [
        migrations.RunSQL([INSTALL_LOCK, read_sql(INSTALL_SCRIPT)],
                          reverse_sql=migrations.RunSQL.noop),
    ]
