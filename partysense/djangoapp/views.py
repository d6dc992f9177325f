"""The view the live board calls for a fresh token (client.js's ``getToken``).

    GET <prefix>/events/<id>/token
    200 {"token": "<jwt>", "expires": 1767225600}
    401 {"error": "unauthorized", "message": …}   not logged in (ALLOW_ANONYMOUS off)
    403 {"error": "forbidden", "message": …}      MAY_WATCH said no
    404 {"error": "no_tokens", "message": …}      the settings have no secret

Never cached (``Cache-Control: no-store``): a token is for whoever asked.
"""

from __future__ import annotations

import time
from typing import Any

from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from partysense.djangoapp.conf import live_settings
from partysense.djangoapp.guests import live_token, refusal


@never_cache
@require_GET
def token(request: Any, event_id: int) -> JsonResponse:
    config = live_settings()
    refused = refusal(request, event_id, config)
    if refused is not None:
        return JsonResponse({"error": refused.error, "message": refused.message},
                            status=refused.status)
    now = time.time()
    minted = live_token(event_id, config, now)
    if minted is None:
        return JsonResponse({"error": "no_tokens", "message": "tokens are off: the settings "
                             "have no TOKEN_SECRET or TOKEN_SECRET_FILE"}, status=404)
    return JsonResponse({"token": minted, "expires": int(now + config.ttl)})
