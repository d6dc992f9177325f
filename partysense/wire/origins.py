"""``--allowed-origins``: may a browser page of this Origin use the WebSocket?

Matched as Autobahn matched them when it refused them itself (with an HTTP
error a page's script cannot read): the Origin, with its port filled in
(``https://party.example`` is ``https://party.example:443``), against each
allowed entry, where ``*`` stands for anything. No list: every Origin. No
Origin at all: not a browser (a phone's app, a script), which Origins do not
guard. ``null`` (a page opened from a file, a sandboxed frame) only when
there is no list.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def with_port(origin: str) -> str | None:
    """``scheme://host:port`` of an Origin header, or None for ``null``, a
    ``file:`` page or something that is no origin at all."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not parts.hostname or scheme == "file":
        return None
    return f"{scheme}://{parts.hostname}:{port or DEFAULT_PORTS.get(scheme)}"


class AllowedOrigins:
    """The allowed entries (tap.normalise_origin'd), compiled once."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed
        self._patterns = [re.compile(".*".join(re.escape(part) for part in entry.split("*")))
                          for entry in allowed]

    def allows(self, origin: str | None) -> bool:
        if not self.allowed or not origin:
            return True
        full = with_port(origin)
        return full is not None and any(pattern.fullmatch(full) for pattern in self._patterns)
