"""``{% live_board event_id %}``: an event's live tallies, built on the daemon's /client.js.

    {% load partysense_live %}
    {% live_board event.id %}                     the top 10
    {% live_board event.id limit=50 nonce=request.csp_nonce %}

It renders a ``<section class="partysense-live">`` with a status line and a
ranked list (each ``<li>`` has ``data-tid``, ``data-up``, ``data-down``), a
fresh token, and a module script that connects and asks the token view
(``partysense_live:token``) for a new token before the old one runs out, on
the same connection. A guest the settings refuse gets the section with the
refusal instead. Needs ``django.template.context_processors.request``.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse

from partysense.djangoapp.conf import live_settings
from partysense.djangoapp.guests import live_token, refusal

register = template.Library()


@register.inclusion_tag("partysense_live/board.html", takes_context=True)
def live_board(context: Any, event_id: int, limit: int = 10,
               nonce: str | None = None) -> dict[str, Any]:
    request = context.get("request")
    if request is None:
        raise ImproperlyConfigured("{% live_board %} needs the request in the template context: "
                                   "add django.template.context_processors.request")
    event_id = int(event_id)
    config = live_settings()
    refused = refusal(request, event_id, config)
    if refused is not None:
        return {"event_id": event_id, "refused": refused}
    token = live_token(event_id, config)
    return {"event_id": event_id, "nonce": nonce, "config": {
        "event": event_id,
        "client": config.client_url,
        "limit": int(limit),
        "token": token,
        "tokenUrl": None if token is None else reverse("partysense_live:token",
                                                       args=[event_id]),
    }}
