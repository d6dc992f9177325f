"""The app's configuration: its label is ``partysense_live``."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from partysense.djangoapp.conf import live_settings


class PartySenseLiveConfig(AppConfig):
    name = "partysense.djangoapp"
    label = "partysense_live"
    verbose_name = "PartySense live"
    default = True

    def ready(self) -> None:
        checks.register(check_settings)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check`` (and runserver, migrate) say what is wrong with
    PARTYSENSE_LIVE before a page does."""
    try:
        live_settings()
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), id="partysense_live.E001")]
    return []
