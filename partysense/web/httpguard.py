"""The HTTP side of the one port, guarded: what a stranger can make it do is bounded.

- A fixed deadline from accept to the WebSocket upgrade: Twisted's idle timer
  restarts on every byte, so a client trickling one header byte every few
  seconds (slowloris) held its connection forever. Plain HTTP requests
  (the page, /healthz, /metrics) are answered in milliseconds; a keep-alive
  connection is closed at the deadline and the browser opens another.
- Connections not yet upgraded are counted from accept, per address with the
  address's clients and in all, below the open-files limit; when they are
  too many, the oldest idle one is closed for a newcomer (partysense/wire/waiting.py).
- No request has a body: one that announces one (Content-Length or
  Transfer-Encoding) gets 413 before its body is read, and the socket is
  closed (Twisted spooled any body to a temporary file: 30 MB in 0.5 s).
- Only GET and HEAD: anything else is 405.
- Every answer carries the site's security headers (partysense/web/headers.py:
  Content-Security-Policy, nosniff, Referrer-Policy, framing), set before
  the resource renders, which may add to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import INegotiated, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import Request, Site

from partysense.adapters.twisted_adapter import site_of_channel, transport_of_channel
from partysense.core.quietlog import Quiet
from partysense.dialects.tokens import TokenError, Tokens, bearer_token
from partysense.process.limits import MAX_WAITING
from partysense.web.headers import SecurityHeaders
from partysense.wire.accesslog import AccessLog, combined_line
from partysense.wire.upgrade import UpgradingChannel
from partysense.wire.waiting import Waiting

ALLOWED_METHODS = (b"GET", b"HEAD")


def closing_response(status: bytes, body: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response that says the connection closes after it."""
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
            + body)


# Said before the request is read, then the connection is closed.
TOO_MANY_FROM_ADDRESS = closing_response(
    b"429 Too Many Requests",
    b"too many connections from your address (--max-connections-per-ip)\n")
NO_ROOM = closing_response(b"503 Service Unavailable", b"too many connections; retry later\n")
# To the idle connection closed for a newcomer: a browser retries a keep-alive request on 408.
IDLE_CLOSED = closing_response(b"408 Request Timeout")


def say_and_close(transport: Any, response: bytes, handshake_done: bool) -> None:
    """Write ``response`` and close; on TLS before its handshake, close at once.

    What is written to a TLS connection waits for its handshake, and so does
    the close after it: an idle socket that never sends a ClientHello would
    keep its file for ever (and refusing with a message would cost us a
    handshake a stranger asked for). ``handshake_done``: a request came over it.
    """
    if INegotiated.providedBy(transport) and not handshake_done:
        transport.abortConnection()
        return
    transport.write(response)
    transport.loseConnection()


class Refusal(Protocol):
    """Says ``response`` as soon as connected, and closes."""

    def __init__(self, response: bytes) -> None:
        self._response = response

    def connectionMade(self) -> None:
        say_and_close(self.transport, self._response, handshake_done=False)


def site_of(request: Request) -> GuardedSite:
    """The site whose connection ``request`` came on."""
    site: GuardedSite = site_of_channel(request.channel)
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
        site = site_of(self)
        site.answering(self.channel)
        self.notifyFinish().addBoth(site.answered, self.channel)
        for name, value in site.headers:
            self.setHeader(name, value)
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
    # ``websocket`` (a protocol factory) unparsed (partysense/wire/upgrade.py).
    protocol = UpgradingChannel  # type: ignore[assignment]
    displayTracebacks = False  # whatever Twisted's default: never to a client
    _log = Logger()

    def __init__(self, resource: Any, clock: IReactorTime, handshake_timeout: float,
                 waiting: Waiting | None = None, name: str = "Site",
                 headers: SecurityHeaders | None = None,
                 access: AccessLog | None = None,
                 address_of: Callable[[Any], str] = peer_host,
                 websocket: IProtocolFactory | None = None, **kwargs: Any) -> None:
        self._name = name
        self.websocket = websocket
        self.headers = (headers or SecurityHeaders()).items()
        # No idle timer of Twisted's: it restarts on every byte. The fixed
        # deadline below replaces it.
        super().__init__(resource, timeout=None, **kwargs)
        # Lines go to the access log, bounded per address (the client's, as
        # ``address_of`` reads it: behind --trusted-proxies, X-Forwarded-For's).
        self.access = access if access is not None else AccessLog(clock)
        self._address_of = address_of
        self._clock = clock
        self._handshake_timeout = handshake_timeout
        self.waiting = waiting if waiting is not None else Waiting(MAX_WAITING)
        self._quiet = Quiet(self._log, clock)
        self.refused = {"handshake_timeout": 0, "body": 0, "per_address": 0, "no_room": 0,
                        "idle_closed": 0}

    def log(self, request: http.Request) -> None:
        # A balancer asks /healthz every few seconds (contrib/'s HAProxy: every
        # 2 s, some 43,000 lines a day per daemon) and each answer that says
        # "ok" says nothing new: only a failing one goes to the access log.
        if request.path == b"/healthz" and request.code == 200:
            return
        if getattr(request, "streamed", False):
            return  # an SSE stream: its own line when it ends (partysense/web/sse.py)
        self.access.request(self._address_of(request), request.code,
                            combined_line(http.datetimeToLogString(self._clock.seconds()),
                                          request))

    def logPrefix(self) -> str:
        # "Site starting on 18854", as a plain twisted.web site says it (and
        # "AdminSite starting on 9854"): the lines operators and the test
        # harness read the bound ports from.
        return self._name

    def buildProtocol(self, addr: Any) -> Any:
        address: str | None = getattr(addr, "host", None)
        waiting = self.waiting
        if waiting.too_many_from(address):
            return self._refuse("per_address", TOO_MANY_FROM_ADDRESS,
                                "Refused a connection from {addr}: {count} connections from it "
                                "already (--max-connections-per-ip, upgraded or not).",
                                addr=address, count=waiting.from_address(address or ""))
        if waiting.is_full() and not self._close_oldest_idle():
            return self._refuse("no_room", NO_ROOM,
                                "Refused a connection from {addr}: all {count} connections "
                                "waiting to upgrade are being answered.",
                                addr=address, count=len(waiting))
        channel = super().buildProtocol(addr)
        waiting.enter(channel, address)
        channel.deadline = self._clock.callLater(self._handshake_timeout, self._deadline, channel)
        return channel

    def _refuse(self, kind: str, response: bytes, message: str, **fields: Any) -> Refusal:
        self.refused[kind] += 1
        self._quiet.warn(kind, message, **fields)
        return Refusal(response)

    def _close_oldest_idle(self) -> bool:
        """Make room for a newcomer: close the connection that has waited
        longest and is not being answered. False if every one is."""
        channel: Any = self.waiting.take_oldest_idle()
        if channel is None:
            return False
        self._stop_deadline(channel)
        transport: Any = transport_of_channel(channel)
        if transport is None:
            return True  # never connected: no socket to close
        self.refused["idle_closed"] += 1
        self._quiet.warn("idle_closed", "Closed {peer}, idle before any upgrade, for a newcomer: "
                         "{count} connections are waiting to upgrade (the open-files limit's "
                         "share, docs/operations.md).", peer=transport.getPeer(),
                         count=self.waiting.budget)
        say_and_close(transport, IDLE_CLOSED, handshake_done=channel.answered_once)
        return True

    def upgraded(self, channel: Any) -> None:
        """The connection of ``channel`` is a WebSocket or an SSE stream now,
        counted by the factory: no deadline, no longer waiting."""
        self._forget(channel)

    def gone(self, channel: Any) -> None:
        """The connection of ``channel`` closed before upgrading."""
        self._forget(channel)

    def _forget(self, channel: Any) -> None:
        self.waiting.leave(channel)
        self._stop_deadline(channel)

    def answering(self, channel: Any) -> None:
        """A whole request came on ``channel``: at the deadline it is only
        idle, and while it is answered it is not closed for a newcomer."""
        channel.answered_once = True
        self.waiting.busy(channel)

    def answered(self, result: Any, channel: Any) -> Any:
        """The request on ``channel`` is answered (``result``: notifyFinish's)."""
        self.waiting.idle(channel)
        return None  # a lost connection is no error here

    @staticmethod
    def _stop_deadline(channel: Any) -> None:
        deadline = getattr(channel, "deadline", None)
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _deadline(self, channel: Any) -> None:
        if not self.waiting.leave(channel):
            return
        transport: Any = transport_of_channel(channel)  # None: never connected
        if transport is None or not getattr(transport, "connected", False):
            return
        if getattr(channel, "answered_once", False):
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
        transport: Any = transport_of_channel(request.channel)
        transport.pauseProducing()  # read no more of it
        transport.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\n\r\n")
        transport.loseConnection()
