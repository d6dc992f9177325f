"""The stand-in PartySense tables (sql/demo_schema.sql), as the real ``event`` and
``music`` apps' migrations create them."""

from django.db import migrations

from partysense.db.sqlfiles import DEMO_SCHEMA_SCRIPT, read_sql


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [
        migrations.RunSQL(
            [read_sql(DEMO_SCHEMA_SCRIPT)],
            reverse_sql=["DROP TABLE event_vote, event_event; DROP VIEW music_view; "
                         "DROP TABLE music_track, music_artist"]),
    ]
