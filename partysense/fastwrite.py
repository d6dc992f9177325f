"""Writing a frame to a client's socket at once, when nothing is waiting ahead of it.

Twisted's ``transport.write`` always buffers and sends only when the reactor
next reports the socket writable: per frame and client, an ``epoll_ctl`` to
watch for writability, a trip through the reactor, ``send()``, and another
``epoll_ctl`` to stop watching. Profiled under fan-out (docs/performance.md)
that round trip cost about as much as the ``send()`` itself. When the
transport's buffer is empty, ``send()`` now is equivalent and cheaper;
whatever the kernel does not take (a slow reader) goes through ``write()``
as before, so ordering, buffering, producers and error handling stay
Twisted's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending right away when the buffer is empty."""
    try:
        fast = (
            type(transport) is tcp.Server
            and not transport._tempDataLen
            and not transport.dataBuffer
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            and not getattr(transport, "TLS", False)
        )
    except AttributeError:  # another Twisted, other internals: the ordinary way
        fast = False
    if fast:
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
