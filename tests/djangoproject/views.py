"""The PartySense event page, reduced to its live board."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.shortcuts import render

# An event nobody may watch live (MAY_WATCH in settings says so).
PRIVATE_EVENT = 13


def may_watch(request: Any, event_id: int) -> bool:
    return event_id != PRIVATE_EVENT


def event_page(request: Any, event_id: int) -> HttpResponse:
    return render(request, "event.html", {"event_id": event_id, "private_event": PRIVATE_EVENT})
