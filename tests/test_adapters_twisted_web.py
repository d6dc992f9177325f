"""Canaries for the names of twisted.web the daemon uses that it does not
document as API (partysense/adapters/twisted_web_adapter.py); the check is
tests/adapters_support.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import StringTransport

from tests.adapters_support import canary

pytestmark = pytest.mark.logic


def _streamed_request(clientproto: bytes) -> tuple[Any, StringTransport]:
    from twisted.web.http import HTTPChannel
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    transport = StringTransport()
    channel = HTTPChannel()  # as partysense/wire/upgrade.py's UpgradingChannel
    channel.site = Site(Resource())
    channel.makeConnection(transport)
    request = Request(channel, queued=False)
    request.clientproto = clientproto
    request.method = b"GET"
    request.uri = request.path = b"/events/1/stream"
    return request, transport


def test_twisted_web_request_reaches_the_connection_transport() -> None:
    from partysense.adapters import twisted_web_adapter

    request, transport = _streamed_request(b"HTTP/1.1")
    canary("twisted", "Request.channel.transport",
           twisted_web_adapter.raw_transport(request) is transport,
           "the channel's transport, to write around Request.write")
    request.channel.connectionLost(None)


def test_twisted_web_last_response_ends_the_keepalive() -> None:
    from partysense.adapters import twisted_web_adapter

    request, _ = _streamed_request(b"HTTP/1.1")
    canary("twisted", "HTTPChannel.persistent", request.channel.persistent in (1, True),
           "a flag, true until the channel decides to close after a response")
    twisted_web_adapter.last_response(request)
    assert not request.channel.persistent
    assert request.responseHeaders.getRawHeaders("connection") == ["close"]
    request.channel.connectionLost(None)


@pytest.mark.parametrize("clientproto, chunked", [(b"HTTP/1.1", True), (b"HTTP/1.0", False)])
def test_twisted_web_chunks_a_response_of_unknown_length(clientproto: bytes,
                                                         chunked: bool) -> None:
    from partysense.adapters import twisted_web_adapter

    request, transport = _streamed_request(clientproto)
    request.write(b"retry: 2000\n\n")
    canary("twisted", "Request.chunked", twisted_web_adapter.is_chunked(request) is chunked,
           "True once the head is out, for an HTTP/1.1 response of unknown length")
    assert (b"\r\nd\r\nretry: 2000\n\n\r\n" in transport.value()) is chunked
    request.channel.connectionLost(None)


def test_twisted_web_sent_length_counts_the_body() -> None:
    from partysense.adapters import twisted_web_adapter

    request, _ = _streamed_request(b"HTTP/1.1")
    request.write(b"0123456789")
    canary("twisted", "Request.sentLength", request.sentLength == 10,
           "an int, the body bytes written so far")
    twisted_web_adapter.written_around(request, 5)
    assert request.sentLength == 15
    request.channel.connectionLost(None)
