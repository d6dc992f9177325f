"""The HTTP side of the one port, guarded: what a stranger can make it do is bounded.

- A fixed deadline from accept to the WebSocket upgrade: Twisted's idle timer
  restarts on every byte, so a client trickling one header byte every few
  seconds (slowloris) held its connection forever. Plain HTTP requests
  (the page, /healthz, /metrics) are answered in milliseconds; a keep-alive
  connection is closed at the deadline and the browser opens another.
- Connections not yet upgraded are counted; past ``max_handshaking`` a new
  one is closed at once.
- No request has a body: one that announces one (Content-Length or
  Transfer-Encoding) gets 413 before its body is read, and the socket is
  closed (Twisted spooled any body to a temporary file: 30 MB in 0.5 s).
- Only GET and HEAD: anything else is 405.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import Request, Site

from partysense.accesslog import AccessLog, combined_line
from partysense.quietlog import Quiet
from partysense.tokens import TokenError, Tokens, bearer_token
from partysense.upgrade import UpgradingChannel

# Connections accepted in the last --handshake-timeout seconds and not yet
# upgraded: room for a venue's whole party reconnecting at once.
MAX_HANDSHAKING = 20_000

ALLOWED_METHODS = (b"GET", b"HEAD")


def site_of(request: Request) -> GuardedSite:
    """The site whose connection ``request`` came on (Site.buildProtocol sets it)."""
    channel: Any = request.channel
    site: GuardedSite = channel.site
    return site


def peer_host(request: Any) -> str:
    """The address ``request`` came from (its socket's peer)."""
    peer: Any = request.getClientAddress()
    return str(getattr(peer, "host", peer))


def bearer(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    return bearer_token(request.getHeader("authorization"))


def token_refusal(tokens: Tokens, request: Request, now: float,
                  event_id: int | None) -> tuple[int, dict[str, str]] | None:
    """The 401 or 403 (status, JSON body) for a request whose Bearer token does
    not allow ``event_id`` (None: every event), or None when it does."""
    try:
        tokens.grant(bearer(request), now).check(event_id)
    except TokenError as error:
        return (401 if error.kind == "unauthorized" else 403,
                {"error": error.kind, "message": error.reason})
    return None


class GuardedRequest(Request):
    def gotLength(self, length: int | None) -> None:
        if length or self.requestHeaders.hasHeader(b"transfer-encoding"):
            site_of(self).refuse_body(self)
            length = 0  # nothing of the body is kept, whatever arrives before the close
        super().gotLength(length)

    def process(self) -> None:
        site_of(self).answered(self.channel)
        if self.method not in ALLOWED_METHODS:
            self.setResponseCode(405)
            self.setHeader(b"allow", b"GET, HEAD")
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            self.write(b"only GET and HEAD\n")
            self.finish()
            return
        super().process()


class GuardedSite(Site):
    """A Site whose connections have a fixed deadline until they upgrade."""

    requestFactory = GuardedRequest
    # HTTP/1.1 channels themselves, not twisted.web's wrapper that can switch
    # to HTTP/2 after ALPN: a WebSocket is an HTTP/1.1 upgrade, and the
    # deadline needs the channel's own transport. Upgrades for / go to
    # ``websocket`` (a protocol factory) unparsed (partysense/upgrade.py).
    protocol = UpgradingChannel  # type: ignore[assignment]
    websocket: IProtocolFactory | None = None
    _log = Logger()

    def __init__(self, resource: Any, clock: IReactorTime, handshake_timeout: float,
                 max_handshaking: int = MAX_HANDSHAKING, name: str = "Site",
                 access: AccessLog | None = None,
                 address_of: Callable[[Any], str] = peer_host, **kwargs: Any) -> None:
        self._name = name
        # No idle timer of Twisted's: it restarts on every byte. The fixed
        # deadline below replaces it.
        super().__init__(resource, timeout=None, **kwargs)
        # Lines go to the access log, bounded per address (the client's, as
        # ``address_of`` reads it: behind --trusted-proxies, X-Forwarded-For's).
        self.access = access if access is not None else AccessLog(clock)
        self._address_of = address_of
        self._clock = clock
        self._handshake_timeout = handshake_timeout
        self._max_handshaking = max_handshaking
        self._quiet = Quiet(self._log, clock)
        self.handshaking = 0
        # Each connection until its deadline: "new", "answered" (a whole request
        # came), "upgraded" (a WebSocket now). Dropped at the deadline: bounded.
        self._pending: dict[Any, str] = {}
        self.refused = {"handshake_timeout": 0, "handshaking": 0, "body": 0}

    def log(self, request: http.Request) -> None:
        # A balancer asks /healthz every few seconds (contrib/'s HAProxy: every
        # 2 s, some 43,000 lines a day per daemon) and each answer that says
        # "ok" says nothing new: only a failing one goes to the access log.
        if request.path == b"/healthz" and request.code == 200:
            return
        if getattr(request, "streamed", False):
            return  # an SSE stream: its own line when it ends (partysense/sse.py)
        self.access.request(self._address_of(request), request.code,
                            combined_line(http.datetimeToLogString(self._clock.seconds()),
                                          request))

    def logPrefix(self) -> str:
        # "Site starting on 18854", as a plain twisted.web site says it (and
        # "AdminSite starting on 9854"): the lines operators and the test
        # harness read the bound ports from.
        return self._name

    def buildProtocol(self, addr: Any) -> Any:
        if self.handshaking >= self._max_handshaking:
            self.refused["handshaking"] += 1
            self._quiet.warn("handshaking", "Refused a connection from {addr}: "
                             "{count} connections are waiting to upgrade already.",
                             addr=addr, count=self.handshaking)
            return None  # Twisted closes the socket at once
        channel = super().buildProtocol(addr)
        self.handshaking += 1
        self._pending[channel] = "new"
        self._clock.callLater(self._handshake_timeout, self._deadline, channel)
        return channel

    def upgraded(self, channel: Any) -> None:
        """The connection of ``channel`` is a WebSocket now: no deadline."""
        if channel in self._pending:
            self._pending[channel] = "upgraded"

    def answered(self, channel: Any) -> None:
        """A whole request came on ``channel``: at the deadline it is only idle."""
        if self._pending.get(channel) == "new":
            self._pending[channel] = "answered"

    def _deadline(self, channel: Any) -> None:
        self.handshaking -= 1
        state = self._pending.pop(channel, "new")
        transport: Any = getattr(channel, "transport", None)  # None: never connected
        if state == "upgraded" or transport is None or not getattr(transport, "connected", False):
            return
        if state == "answered":
            # A browser's or a scraper's keep-alive connection: it opens another.
            transport.loseConnection()
            return
        self.refused["handshake_timeout"] += 1
        self._quiet.warn("handshake_timeout", "Closed {peer}: no WebSocket upgrade within "
                         "{timeout:g} s of connecting (--handshake-timeout).",
                         peer=transport.getPeer(), timeout=self._handshake_timeout)
        transport.loseConnection()

    def refuse_body(self, request: Request) -> None:
        self.refused["body"] += 1
        transport: Any = request.channel.transport
        transport.pauseProducing()  # read no more of it
        transport.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\n\r\n")
        transport.loseConnection()
