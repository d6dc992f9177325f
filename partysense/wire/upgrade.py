"""WebSocket upgrades handed to Autobahn before twisted.web parses them.

Through twisted.web, an upgrade was parsed twice: twisted.web read the
request line by line into a Request (headers, the date, the resource tree),
then Autobahn's WebSocketResource wrote it back out as bytes for Autobahn to
parse again. Nearly a fifth of the daemon's CPU while thousands of clients
connected (bench/storm.py) was the first parse.

Here the first bytes of a connection are looked at once: when they are one
whole ``GET /`` (or ``/?...``) HTTP/1.1 request asking for a WebSocket, with
no body, they go straight to the WebSocket factory, which parses and checks
the handshake as it always did (the key, the version, Origins, subprotocols).
Anything else (the page, /healthz, a request split over several reads, a
body announced, a head past twisted.web's limits) takes the usual way
through twisted.web and its guards.

The fast way refuses what twisted.web refuses: a head with more headers than
``HTTPChannel.maxHeaders`` (500), more bytes than ``totalHeadersSize``, or a
line longer than ``MAX_LENGTH`` goes the usual way, to be answered 400 (or
closed) there. Autobahn counts none of them: 1,900 headers in 8 KB got 101
Switching Protocols for eight times the CPU of a plain handshake. So does a
head with a header name, a byte or a target twisted.web refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.web.http import HTTPChannel

from partysense.adapters.twisted_adapter import site_of_channel, switch_protocol, take_over

# A request head larger than this goes the usual way (twisted.web's limits).
MAX_HEAD = 8192


@dataclass(frozen=True)
class HeadLimits:
    """What twisted.web's HTTPChannel allows in a request head."""

    max_headers: int = HTTPChannel.maxHeaders
    # The request line and header lines together, without their CRLFs.
    max_size: int = HTTPChannel.totalHeadersSize
    max_line: int = HTTPChannel.MAX_LENGTH


TWISTED_WEB = HeadLimits()


def within(lines: list[bytes], head_bytes: int, limits: HeadLimits) -> bool:
    """Would twisted.web read these head lines (``head_bytes`` with their
    CRLFs) without refusing them? Counted as it counts them, cheaply: no
    line is looked at unless the whole head could hold one too long."""
    if len(lines) - 1 > limits.max_headers:
        return False
    size = head_bytes - 2 * (len(lines) - 1)  # the lines without their CRLFs
    if size > limits.max_size:
        return False
    return size <= limits.max_line or max(map(len, lines)) <= limits.max_line


# A header name (RFC 9110's token) and a request target (visible ASCII) as
# twisted.web takes them.
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
VISIBLE = re.compile(rb"[!-~]+")


def between_lines_only(head: bytes, breaks: int) -> bool:
    """No NUL in ``head``, and CR and LF only in its ``breaks`` CRLFs between lines."""
    return b"\x00" not in head and head.count(b"\r") == breaks == head.count(b"\n")


def is_websocket_upgrade(data: bytes, limits: HeadLimits = TWISTED_WEB) -> bool:
    """``data`` begins with one whole ``GET /`` HTTP/1.1 request head asking
    for a WebSocket, with no body announced, within twisted.web's ``limits``.

    What else twisted.web refuses in a head (a header name that is not a
    token, NUL or a bare CR in a value, a target not printable) goes its way
    too: Autobahn refuses it as well, but not every version we support does
    (24.4.2 takes all four), nor does every twisted.web (24.7.0 takes NUL and
    a bare CR); this way the answer is twisted.web's, whatever the versions.
    """
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return False
    head = data[:end]
    lines = head.split(b"\r\n")
    if not within(lines, end, limits) or not between_lines_only(head, len(lines) - 1):
        return False  # twisted.web answers 400
    method, _, rest = lines[0].partition(b" ")
    target, _, version = rest.partition(b" ")
    if method != b"GET" or version != b"HTTP/1.1" \
            or not (target == b"/" or target.startswith(b"/?")) or not VISIBLE.fullmatch(target):
        return False
    upgrade = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.fullmatch(name):
            return False  # a continuation line, no header, a bad name: twisted.web decides
        name = name.strip().lower()
        if name in (b"content-length", b"transfer-encoding"):
            return False  # a body: the guard refuses it (413)
        if name == b"upgrade":
            upgrade = value.strip().lower() == b"websocket"
    return upgrade


def hand_over(transport: Any, factory: IProtocolFactory, data: bytes) -> None:
    """The connection now speaks ``factory``'s protocol, which is fed ``data``.

    As Autobahn's WebSocketResource takes a socket over from twisted.web,
    TLS wrappers included (partysense/adapters/twisted_adapter.py).
    """
    protocol = factory.buildProtocol(transport.getPeer())
    if protocol is None:
        transport.loseConnection()
        return
    switch_protocol(transport, protocol)
    protocol.makeConnection(transport)
    protocol.dataReceived(data)


def taken_over(channel: Any) -> None:
    """The connection of ``channel`` is a WebSocket or an SSE stream from now on,
    counted as a client: neither the HTTP channel's idle timer nor the handshake
    deadline may fire on it, and it no longer waits to upgrade (its site's
    ``upgraded``, partysense/web/httpguard.py)."""
    channel.setTimeout(None)
    site_of_channel(channel).upgraded(channel)


class UpgradingChannel(HTTPChannel):
    """An HTTP/1.1 channel whose site may take WebSocket upgrades straight.

    The site says where they go (``site.websocket``, a protocol factory, or
    None for plain HTTP) and is told of each (``site.upgraded(channel)``),
    and of a connection lost before it upgraded (``site.gone(channel)``).
    """

    _first = True
    # HTTPChannel's own (maxHeaders, totalHeadersSize, MAX_LENGTH): a
    # subclass that changes those must set this to match.
    head_limits = TWISTED_WEB
    # Kept for the site (partysense/web/httpguard.py): the handshake deadline's
    # call, and whether a whole request has come.
    deadline: Any = None
    answered_once = False

    def dataReceived(self, data: bytes) -> None:
        if self._first:
            self._first = False
            site: Any = site_of_channel(self)
            websocket = getattr(site, "websocket", None)
            if websocket is not None and is_websocket_upgrade(data, self.head_limits):
                taken_over(self)
                hand_over(take_over(self), websocket, data)
                return
        super().dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        site: Any = site_of_channel(self)
        if site is not None and hasattr(site, "gone"):
            site.gone(self)  # no longer waiting to upgrade
        super().connectionLost(reason)
