"""Twisted, as the daemon needs it: writing to a TCP socket at once, and
taking a connection over from twisted.web.

``transport.write`` always buffers and sends only when the reactor next
reports the socket writable: per frame and client, an ``epoll_ctl`` to watch
for writability, a trip through the reactor, ``send()``, and another
``epoll_ctl`` to stop watching. Profiled under fan-out (docs/performance.md)
that round trip cost about as much as the ``send()`` itself. When the
transport's buffer is empty, ``send()`` now is equivalent and cheaper; what
the kernel does not take goes through ``write()`` as before, so ordering,
buffering, producers and error handling stay Twisted's.

A WebSocket upgrade or an SSE stream takes its socket over from the HTTP
channel that read the request. twisted.web offers no public way to do it
(twisted ticket 3204); Autobahn's WebSocketResource does it as here: the
channel forgets its transport (``HTTPChannel.transport`` set to None), and
the transport is re-plumbed to the new protocol (``tcp.Connection.protocol``,
or ``ProtocolWrapper.wrappedProtocol`` under TLS). And the channel knows its
site only through the attribute ``Site.buildProtocol`` sets (``channel.site``).

Private names used: ``tcp.Server._tempDataLen``, ``dataBuffer``,
``_writeDisconnected``, ``TLS``; ``HTTPChannel.site``, ``HTTPChannel.transport``
(set to None), ``tcp.Connection.protocol``, ``ProtocolWrapper.wrappedProtocol``.
Canaries: tests/test_adapters_twisted.py. Another Twisted without the first four takes
the ordinary way (``write()``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IProtocol
from twisted.protocols.policies import ProtocolWrapper


def can_send_now(transport: Any) -> bool:
    """Whether nothing waits in the transport's buffer, so a ``send()`` keeps order."""
    try:
        return bool(
            type(transport) is tcp.Server
            and not transport._tempDataLen
            and not transport.dataBuffer
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            and not getattr(transport, "TLS", False)
        )
    except AttributeError:  # another Twisted, other internals: the ordinary way
        return False


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending right away when the buffer is empty."""
    if can_send_now(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # EAGAIN: the kernel buffer is full. Anything else (a reset):
            # write() buffers it and the reactor reports the loss as usual.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def site_of_channel(channel: Any) -> Any:
    """The Site whose connection ``channel`` (an HTTPChannel) is, or None when
    it was made outside a Site. ``Site.buildProtocol`` sets it."""
    return getattr(channel, "site", None)


def transport_of_channel(channel: Any) -> Any:
    """The transport an HTTPChannel reads from; None before it is connected
    and once its connection is taken over (``take_over``)."""
    return getattr(channel, "transport", None)


def take_over(channel: Any) -> Any:
    """Detach the transport from ``channel`` (an HTTPChannel) and return it.

    The channel then writes nothing more to the socket and no longer sees it
    close (as Autobahn's WebSocketResource leaves it); ``switch_protocol``
    gives the transport its new protocol.
    """
    transport, channel.transport = channel.transport, None
    return transport


def switch_protocol(transport: Any, protocol: IProtocol) -> None:
    """From now on what ``transport`` reads goes to ``protocol``.

    The transport of a TLS connection is the TLS protocol wrapping ours
    (``ProtocolWrapper``); after ``startTLS`` a TCP connection's protocol is;
    a plain TCP connection hands its bytes to its ``protocol``.
    """
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
