"""``/client.js``: the browser client module (partysense/web/static/client.js), versioned.

Its version is a hash of its content. ``/client.js?v=<that hash>`` is cached
for a year (``immutable``): a new release has a new hash, so a new URL. Plain
``/client.js`` (and an old ``?v=``) is cached for five minutes, then
revalidated by its strong ETag (a 304 of a few bytes). The live page
imports the versioned URL: app.js names it as ``/client.js?v=CLIENT_VERSION``,
filled in at start-up (unfilled it still works, with the short cache).

``Access-Control-Allow-Origin: *``: a page of another origin (the Django
app's) may import it as a module, which browsers fetch in CORS mode. It is
public code; the WebSocket it opens is still checked against
``--allowed-origins``.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

NAME = "client.js"
PLACEHOLDER = b"/client.js?v=CLIENT_VERSION"
LONG = "public, max-age=31536000, immutable"
SHORT = "public, max-age=300"


class ClientScript(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.version = hashlib.sha256(body).hexdigest()[:16]

    @classmethod
    def packaged(cls) -> ClientScript:
        return cls(resources.files("partysense.web").joinpath("static", NAME).read_bytes())

    @property
    def url(self) -> str:
        return f"/{NAME}?v={self.version}"

    def versioned(self, text: bytes) -> bytes:
        """``text`` (a page's script) with its import of the module versioned."""
        return text.replace(PLACEHOLDER, self.url.encode("ascii"))

    def render_GET(self, request: Request) -> bytes:
        asked = request.args.get(b"v", [b""])[0]
        request.setHeader("content-type", "text/javascript; charset=utf-8")
        request.setHeader("cache-control", LONG if asked == self.version.encode() else SHORT)
        request.setHeader("access-control-allow-origin", "*")
        request.setHeader("x-content-type-options", "nosniff")
        if request.setETag(f'"{self.version}"'.encode("ascii")) == http.CACHED:
            return b""
        return self.body
