"""Twisted, as the daemon needs it: writing to a TCP socket at once.

``transport.write`` always buffers and sends only when the reactor next
reports the socket writable: per frame and client, an ``epoll_ctl`` to watch
for writability, a trip through the reactor, ``send()``, and another
``epoll_ctl`` to stop watching. Profiled under fan-out (docs/performance.md)
that round trip cost about as much as the ``send()`` itself. When the
transport's buffer is empty, ``send()`` now is equivalent and cheaper; what
the kernel does not take goes through ``write()`` as before, so ordering,
buffering, producers and error handling stay Twisted's.

Private names used: ``tcp.Server._tempDataLen``, ``dataBuffer``,
``_writeDisconnected``, ``TLS``. Canaries: tests/test_adapters.py. Another
Twisted without them takes the ordinary way (``write()``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


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
