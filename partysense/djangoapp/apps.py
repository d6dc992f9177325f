"""The app's configuration: its label is ``partysense_live``."""

from django.apps import AppConfig


class PartySenseLiveConfig(AppConfig):
    name = "partysense.djangoapp"
    label = "partysense_live"
    verbose_name = "PartySense live"
    default = True
