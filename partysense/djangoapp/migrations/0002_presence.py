"""Run sql/install.sql again: it gained presence (``partysense_presence`` and
``partysense_presence_report()``, how many watch each event across daemons).

Reversed by dropping what this release added; 0001's reverse (sql/uninstall.sql)
drops the rest. The daemon's role needs ``EXECUTE`` on the new function
(docs/operations.md, section 3).
"""

from django.db import migrations

from partysense.sqlfiles import INSTALL_LOCK, INSTALL_SCRIPT, read_sql

INSTALL_SHA256 = "1c7dfd793e474735f4717ded8a769933f090339468ab1ca37bafa11382bc7fa7"

REMOVE_PRESENCE = """
DROP FUNCTION IF EXISTS partysense_presence_report(uuid, bigint[], integer[], double precision);
DROP TABLE IF EXISTS partysense_presence;
"""


class Migration(migrations.Migration):
    dependencies = [("partysense_live", "0001_install")]

    operations = [
        migrations.RunSQL([INSTALL_LOCK, read_sql(INSTALL_SCRIPT)],
                          reverse_sql=[INSTALL_LOCK, REMOVE_PRESENCE]),
    ]
