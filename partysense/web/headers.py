"""The security headers every HTTP answer of the daemon carries.

The live page's browser gets told, by header, what the page may do:

- ``Content-Security-Policy``: scripts, styles, images and connections from
  this daemon only, nothing inline. ``connect-src 'self'`` covers the page's
  WebSocket too: CSP Level 3 lets ``'self'`` match ``ws:``/``wss:`` on the
  page's own host and port, which is right behind any proxy (the page's
  ``https://host`` and its ``wss://host`` are one origin to it), where a URL
  we wrote ourselves could not be (the daemon does not know the name the
  browser used). ``ws: wss:`` would let a script injected into the page talk
  to any host. ``frame-ancestors`` comes from ``--frame-ancestors``: who may
  show the page in a frame (the DJ console), ``'none'`` by default.
- ``X-Frame-Options``: the same, for browsers older than ``frame-ancestors``
  (``DENY`` / ``SAMEORIGIN``; it has no way to name an origin, so with a
  list of origins it is left out and ``frame-ancestors`` decides).
- ``X-Content-Type-Options: nosniff``: a response is what its type says
  (JSON is never run as a script, text never shown as HTML).
- ``Referrer-Policy: no-referrer``: the page's URL may carry ``?token=``;
  no request the page makes tells anybody that URL.

Every answer gets them (JSON, /metrics, errors): they cost a few bytes and
a document opened from any of them is held to the same policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NONE = "'none'"
SELF = "'self'"

# What the page needs and nothing more (partysense/web/static/): its own
# scripts, styles and fetches; the empty icon and the chart are data: URLs.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
               "form-action 'self'")

# An origin a page embedding ours may have: scheme, host (a leading "*."
# for any subdomain, as CSP allows), optional port. Nothing else: the value
# goes into a header, where ";" or "," would start another directive.
ORIGIN = re.compile(r"https?://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:[0-9]{1,5})?")


def frame_ancestors_from(text: str) -> tuple[str, ...]:
    """``--frame-ancestors`` as CSP sources: ``'none'``, ``'self'``, or origins
    (comma- or space-separated, ``'self'`` may be among them).

    Raises ValueError, saying which entry is wrong.
    """
    entries = [entry.strip().rstrip("/") for entry in re.split(r"[,\s]+", text) if entry.strip()]
    if not entries:
        raise ValueError("--frame-ancestors needs 'none', 'self' or origins")
    sources: list[str] = []
    for entry in entries:
        bare = entry.strip("'").lower()
        if bare in ("none", "self"):
            sources.append(f"'{bare}'")
        elif ORIGIN.fullmatch(entry):
            sources.append(entry)
        else:
            raise ValueError(f"--frame-ancestors: {entry[:80]!r} is not 'none', 'self' "
                             "or an origin such as https://dj.example")
    if NONE in sources and len(sources) > 1:
        raise ValueError("--frame-ancestors: 'none' cannot be combined with other sources")
    return tuple(dict.fromkeys(sources))


@dataclass(frozen=True)
class SecurityHeaders:
    """The headers of every answer, for a ``--frame-ancestors`` value."""

    frame_ancestors: tuple[str, ...] = (NONE,)

    @property
    def policy(self) -> str:
        return f"{PAGE_POLICY}; frame-ancestors {' '.join(self.frame_ancestors)}"

    @property
    def frame_options(self) -> str | None:
        if self.frame_ancestors == (NONE,):
            return "DENY"
        if self.frame_ancestors == (SELF,):
            return "SAMEORIGIN"
        return None

    def items(self) -> tuple[tuple[bytes, bytes], ...]:
        """(name, value) pairs, ready for ``Request.setHeader``."""
        pairs = [("content-security-policy", self.policy),
                 ("x-content-type-options", "nosniff"),
                 ("referrer-policy", "no-referrer")]
        if self.frame_options is not None:
            pairs.append(("x-frame-options", self.frame_options))
        return tuple((name.encode("ascii"), value.encode("ascii")) for name, value in pairs)
