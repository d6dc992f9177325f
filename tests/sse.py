"""A Server-Sent Events client on a raw socket, for tests: every byte in view.

It sends one GET, reads the status and headers, undoes HTTP/1.1 chunking
itself and parses the event stream (fields, comments) as a browser would,
collecting events from a thread. ``rcvbuf`` and ``read=False`` make a client
that stops reading (the slow-reader test).
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from harness.daemon import wait_for


class Stream:
    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None,
                 rcvbuf: int | None = None, read: bool = True) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.events: list[dict[str, str]] = []
        self.comments: list[str] = []
        self.ids: list[str] = []          # every id: field, with an event or not
        self.ended = False                # the server ended the response (or the socket)
        self.finished = False             # the last chunk came: ended cleanly
        self._body_parts: list[bytes] = []  # the decoded body
        self._changes: list[dict[str, Any]] = []
        self.status, self.reason, self.headers = 0, "", {}
        self._raw = b""
        self._chunked = False
        self._chunk_left = 0
        self._text = b""
        self._fields: dict[str, str] = {}
        self._read_head()
        self._thread: threading.Thread | None = None
        if read:
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _read_head(self) -> None:
        while b"\r\n\r\n" not in self._raw:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"closed before the headers: {self._raw!r}")
            self._raw += data
        head, _, self._raw = self._raw.partition(b"\r\n\r\n")
        status, *header_lines = head.decode("latin-1").split("\r\n")
        _, code, self.reason = status.split(" ", 2)
        self.status = int(code)
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding") == "chunked"
        self._feed(b"")

    @property
    def body(self) -> bytes:
        return b"".join(self._body_parts)

    def whole_body(self) -> bytes:
        """A refusal's body (the whole response)."""
        if self._thread is None:
            self._read()
        wait_for(lambda: self.ended, 10, "the response to end")
        return self.body

    def json_body(self) -> Any:
        """A refusal's JSON body (the whole response)."""
        return json.loads(self.whole_body())

    def _read(self) -> None:
        try:
            while not self.finished:
                data = self.sock.recv(65536)
                if not data:
                    break
                self._feed(data)
        except OSError:
            pass
        self.ended = True

    def _feed(self, data: bytes) -> None:
        self._raw += data
        if not self._chunked:
            self._body(self._raw)
            self._raw = b""
            return
        while self._raw:
            if self._chunk_left > 0:
                take = self._raw[:self._chunk_left]
                self._raw = self._raw[len(take):]
                self._chunk_left -= len(take)
                self._body(take)
                if self._chunk_left == 0:
                    self._chunk_left = -2  # its CRLF
                continue
            if self._chunk_left < 0:
                if len(self._raw) < 2:
                    return
                assert self._raw[:2] == b"\r\n", self._raw[:20]
                self._raw, self._chunk_left = self._raw[2:], 0
                continue
            line, found, rest = self._raw.partition(b"\r\n")
            if not found:
                return
            size = int(line, 16)
            self._raw = rest
            if size == 0:
                self.ended = self.finished = True
                return
            self._chunk_left = size

    def _body(self, data: bytes) -> None:
        self._body_parts.append(data)
        *lines, self._text = (self._text + data).split(b"\n")
        for line in lines:
            self._line(line.decode("utf-8"))

    def _line(self, line: str) -> None:
        if not line:  # dispatch
            fields, self._fields = self._fields, {}
            if "data" in fields:
                self.events.append(fields)
                if fields.get("event") == "change":
                    self._changes.append(json.loads(fields["data"]))
            return
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self.ids.append(value)
        self._fields[name] = value

    def changes(self) -> list[dict[str, Any]]:
        """The data of every ``change`` event so far."""
        return list(self._changes)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._thread is not None:
            self._thread.join(5)
