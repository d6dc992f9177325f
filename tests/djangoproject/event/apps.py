from django.apps import AppConfig


class EventConfig(AppConfig):
    """PartySense's ``event`` app, which owns event_vote: here the stand-in tables."""

    name = "tests.djangoproject.event"
    label = "event"
