"""``manage.py partysense_install``: run sql/install.sql again on Django's database.

The same script, lock and transaction as ``partysense-db install``, on the
connection Django already has (``--database`` picks another alias). The
migration installs it once; this is for repairing a database by hand (a
trigger dropped, a restore from an old dump). Idempotent.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from partysense.db.sqlfiles import INSTALL_LOCK, INSTALL_SCRIPT, read_sql


class Command(BaseCommand):
    help = "Install or upgrade partysense-live's change log, functions and triggers (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="the database alias (default: %(default)s)")

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"]
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(INSTALL_LOCK)
            cursor.execute(read_sql(INSTALL_SCRIPT))
        self.stdout.write(f"partysense-live: installed {INSTALL_SCRIPT} on database "
                          f"{alias!r}")
