"""A deliberately minimal WebSocket client on a raw socket.

For what a polite client library will not do: stall (never read), send
malformed frames and handshakes, shrink its receive buffer.
"""

from __future__ import annotations

import base64
import os
import socket
import struct


def open_raw(port: int, subprotocol: str | None = None, rcvbuf: int | None = None,
             host: str = "127.0.0.1", timeout: float = 10.0,
             source: str | None = None) -> socket.socket:
    """Connect and complete the opening handshake; the socket is then ours to misuse.

    ``source``: the address to connect from (127.0.0.2, … are loopback too on Linux).
    """
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source is not None:
        sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET / HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
    ]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"handshake refused: {response!r}")
        response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {response!r}")
    return sock


def frame(payload: bytes, opcode: int = 1, fin: bool = True, mask: bool = True,
          rsv: int = 0) -> bytes:
    """One client frame (masked, as the RFC requires of clients)."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def send_text(sock: socket.socket, text: str) -> None:
    sock.sendall(frame(text.encode("utf-8")))


def _exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """The next server frame: (opcode, payload)."""
    first, second = _exactly(sock, 2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", _exactly(sock, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", _exactly(sock, 8))[0]
    return first & 0x0F, _exactly(sock, length)
