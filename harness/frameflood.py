"""Floods of WebSocket frames that are not messages, on a raw socket (issue 15).

What tests/test_frame_floods.py checks and bench/floods.py measures: one
connection that sends frames as fast as the socket takes them and reads what
comes back (its pongs), until the daemon's close frame. Two kinds:

- ``ping``: 16-byte pings;
- ``fragments``: a text frame with FIN=0, then empty continuation frames.

No token, no subscribe: nothing but the handshake comes first.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

CONTINUATION, TEXT, CLOSE, PING = 0, 1, 8, 9


def client_frame(payload: bytes, opcode: int, fin: bool = True) -> bytes:
    """One masked client frame with a payload under 126 bytes."""
    assert len(payload) < 126
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + key + masked


# kind -> (the first frame, the frame sent again and again after it)
FLOODS = {
    "ping": (client_frame(b"p" * 16, PING), client_frame(b"p" * 16, PING)),
    "fragments": (client_frame(b"", TEXT, fin=False),
                  client_frame(b"", CONTINUATION, fin=False)),
}


@dataclass
class Flooded:
    code: int | None      # the daemon's close code; None: not closed (or dropped without one)
    seconds: float        # from the first frame to the close frame (or the time allowed)
    bytes_sent: int


def open_websocket(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    """A socket past the opening handshake (no subprotocol, no token)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)  # byte by byte: nothing of the first frame is read here
        if not chunk:
            raise ConnectionError(f"handshake refused: {response!r}")
        response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise ConnectionError(f"handshake refused: {response!r}")
    return sock


def close_code_in(buffer: bytes) -> tuple[int | None, bytes]:
    """Walk the complete server frames at the start of ``buffer``: the close
    frame's code if one is there, and the bytes not yet walked."""
    at = 0
    while len(buffer) - at >= 2:
        opcode, length, head = buffer[at] & 0x0F, buffer[at + 1] & 0x7F, 2
        if length == 126:
            if len(buffer) - at < 4:
                break
            length, head = struct.unpack("!H", buffer[at + 2:at + 4])[0], 4
        elif length == 127:
            if len(buffer) - at < 10:
                break
            length, head = struct.unpack("!Q", buffer[at + 2:at + 10])[0], 10
        if len(buffer) - at < head + length:
            break
        if opcode == CLOSE:
            payload = buffer[at + head:at + head + length]
            return (struct.unpack("!H", payload[:2])[0] if length >= 2 else 1005), b""
        at += head + length
    return None, buffer[at:]


def flood(port: int, kind: str, seconds: float) -> Flooded:
    """One connection flooding for at most ``seconds``: until the daemon's close frame."""
    first, each = FLOODS[kind]
    batch = each * 64
    sock = open_websocket(port)
    try:
        sock.setblocking(False)
        pending: bytes | None = first
        sent, unread = 0, b""
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            writing = [sock] if pending is not None else []
            readable, writable, _ = select.select([sock], writing, [], 0.05)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    return Flooded(None, elapsed, sent)
                code, unread = close_code_in(unread + chunk)
                if code is not None:
                    return Flooded(code, time.monotonic() - started, sent)
            if writable and pending is not None:
                try:
                    done = sock.send(pending)
                except OSError:  # the daemon has gone: read what it said
                    pending = None
                    continue
                sent += done
                # What the socket did not take goes first next time: a frame
                # cut in two would be a protocol error, not a flood.
                pending = pending[done:] or batch
        return Flooded(None, seconds, sent)
    finally:
        sock.close()
