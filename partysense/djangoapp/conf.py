"""``settings.PARTYSENSE_LIVE``, read and checked.

    PARTYSENSE_LIVE = {
        "URL": "https://live.partysense.example",  # the daemon (/client.js, its WebSocket)
        "TOKEN_SECRET_FILE": "/etc/partysense-live/token.secret",  # or "TOKEN_SECRET"
        "TOKEN_SECRET_ENCODING": "raw",   # "base64": as the daemon's --token-secret-encoding
        "TOKEN_AUDIENCE": None,           # the daemon's --token-audience, if it has one
        "TOKEN_TTL": 600,                 # seconds; the page fetches a fresh one in time
        "ALLOW_ANONYMOUS": False,         # guests who are not logged in may watch
        "MAY_WATCH": None,                # "event.live.may_watch": (request, event_id) -> bool
        "MIGRATE_AFTER": ("event", "__first__"),  # the migration that creates event_vote
    }

Read at each use (a test's ``settings`` fixture, ``override_settings`` work).
Without a secret no token is minted: the daemon runs without token options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from partysense.dialects.tokens import parse_secret, read_secret

SETTING = "PARTYSENSE_LIVE"
KNOWN = {"URL", "TOKEN_SECRET", "TOKEN_SECRET_FILE", "TOKEN_SECRET_ENCODING", "TOKEN_AUDIENCE",
         "TOKEN_TTL", "ALLOW_ANONYMOUS", "MAY_WATCH", "MIGRATE_AFTER"}
DEFAULT_TTL = 600
DEFAULT_MIGRATE_AFTER = ("event", "__first__")


@dataclass(frozen=True)
class LiveSettings:
    url: str                      # the daemon's http(s):// (or ws(s)://) address
    secret: bytes | None          # None: tokens off
    audience: str | None
    ttl: float
    allow_anonymous: bool
    may_watch: Callable[[Any, int], bool] | None

    @property
    def client_url(self) -> str:
        """Where the daemon serves ``/client.js``."""
        base = self.url.rstrip("/")
        for socket, web in (("wss://", "https://"), ("ws://", "http://")):
            if base.startswith(socket):
                base = web + base[len(socket):]
        return f"{base}/client.js"


def raw() -> dict[str, Any]:
    value = getattr(settings, SETTING, {})
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"{SETTING} must be a dict")
    unknown = set(value) - KNOWN
    if unknown:
        raise ImproperlyConfigured(f"{SETTING}: unknown keys {sorted(unknown)}; "
                                   f"known: {sorted(KNOWN)}")
    return value


def live_settings() -> LiveSettings:
    """The settings, checked; ImproperlyConfigured says what is wrong."""
    value = raw()
    url = value.get("URL")
    if not isinstance(url, str) or not url.startswith(("https://", "http://", "wss://", "ws://")):
        raise ImproperlyConfigured(f'{SETTING}["URL"] must be the daemon\'s address, '
                                   'e.g. "https://live.partysense.example"')
    ttl = value.get("TOKEN_TTL", DEFAULT_TTL)
    if type(ttl) not in (int, float) or ttl <= 0:
        raise ImproperlyConfigured(f'{SETTING}["TOKEN_TTL"] must be a number of seconds')
    may_watch = value.get("MAY_WATCH")
    return LiveSettings(
        url=url, secret=_secret(value), audience=value.get("TOKEN_AUDIENCE"), ttl=float(ttl),
        allow_anonymous=bool(value.get("ALLOW_ANONYMOUS", False)),
        may_watch=import_string(may_watch) if isinstance(may_watch, str) else may_watch)


def migrate_after() -> list[tuple[str, str]]:
    """The migration's dependency: the one that creates ``event_vote``."""
    after = raw().get("MIGRATE_AFTER", DEFAULT_MIGRATE_AFTER)
    return [] if after is None else [(str(after[0]), str(after[1]))]


def _secret(value: dict[str, Any]) -> bytes | None:
    text, path = value.get("TOKEN_SECRET"), value.get("TOKEN_SECRET_FILE")
    encoding = value.get("TOKEN_SECRET_ENCODING", "raw")
    if text is not None and path is not None:
        raise ImproperlyConfigured(f"{SETTING}: TOKEN_SECRET or TOKEN_SECRET_FILE, not both")
    try:
        if path is not None:
            return read_secret(str(path), encoding)
        if text is not None:
            return parse_secret(text.encode("utf-8") if isinstance(text, str) else text,
                                encoding)
    except ValueError as error:
        raise ImproperlyConfigured(f"{SETTING}: {error}") from None
    return None
