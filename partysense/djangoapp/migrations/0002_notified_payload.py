"""Run sql/install.sql again: the payload's shortening rule became one function,
``partysense_notified_payload``, that the trigger and the daemon's reads share.

Reversing it changes nothing: 0001's reverse (sql/uninstall.sql) drops the
new function with the rest.
"""

from django.db import migrations

from partysense.db.sqlfiles import INSTALL_LOCK, INSTALL_SCRIPT, read_sql

INSTALL_SHA256 = "8fcf720b65ec330447ae7c4b6cc624275dacbf15e54413352fc238a7749b46de"


class Migration(migrations.Migration):
    dependencies = [("partysense_live", "0001_install")]

    operations = [
        migrations.RunSQL([INSTALL_LOCK, read_sql(INSTALL_SCRIPT)],
                          reverse_sql=migrations.RunSQL.noop),
    ]
