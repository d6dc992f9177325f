"""Watching a running daemon's stream over its WebSocket (``partysense-db tail --url``).

Speaks partysense.v2, like the live page: one subscription, the event's
tallies first (printed to stderr), then one line per change on stdout.
Kept apart from partysense/cli/tail.py so that ``partysense-db install`` does
not import Autobahn.

    -> {"type": "subscribe", "event": 1, "id": "tail"}
    <- {"type": "snapshot", ...}  or  {"type": "subscribed", "event": "ALL", ...}
    <- {"type": "change", ...}    one per vote change, until the daemon closes
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, ssl
from twisted.python.failure import Failure

from partysense.cli.tailformat import ALL, V2_SUBPROTOCOL, describe, printable, quoted


class TailProtocol(WebSocketClientProtocol):
    """Subscribes once, prints changes to ``out`` and everything else to ``err``."""

    factory: TailFactory

    def onOpen(self) -> None:
        event = ALL if self.factory.event_id is None else self.factory.event_id
        self.sendMessage(json.dumps({"type": "subscribe", "event": event, "id": "tail"})
                         .encode("utf-8"))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        factory = self.factory
        try:
            message = json.loads(payload)
            kind = message["type"]
        except (ValueError, TypeError, KeyError):
            print(f"(not a v2 message) {printable(repr(payload))}", file=factory.err,
                  flush=True)
            return
        if kind == "change":
            if factory.raw:
                print(printable(payload.decode("utf-8")), file=factory.out, flush=True)
            else:
                print(printable(describe(message)), file=factory.out, flush=True)
        elif kind in ("snapshot", "subscribed"):
            for line in _subscribed(message, self.factory.url).splitlines():
                print(printable(line), file=factory.err, flush=True)
        elif kind == "error":
            print(printable(f"partysense-db tail: the daemon says {message.get('error')}: "
                            f"{message.get('message')}"), file=factory.err, flush=True)
            factory.code = 1
            self.sendClose(1000)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        factory = self.factory
        if factory.code is None:  # the daemon closed, or the connection broke
            print(printable(f"partysense-db tail: connection closed "
                            f"(code {code}: {reason or 'no reason'})"), file=factory.err,
                  flush=True)
            factory.code = 1
        if not factory.done.called:
            factory.done.callback(factory.code)


class TailFactory(WebSocketClientFactory):
    protocol = TailProtocol  # type: ignore[assignment]

    def __init__(self, url: str, event_id: int | None, raw: bool, out: IO[str],
                 err: IO[str]) -> None:
        super().__init__(url, protocols=[V2_SUBPROTOCOL])
        self.event_id = event_id
        self.raw = raw
        self.out = out
        self.err = err
        self.code: int | None = None
        self.done: defer.Deferred[int] = defer.Deferred()

    def interrupted(self) -> None:
        """Ctrl-C or SIGTERM: the user stopped us, which is a success."""
        if self.code is None:
            self.code = 0

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)


def watch(url: str, event_id: int | None, raw: bool, cafile: str | None, out: IO[str],
          err: IO[str]) -> defer.Deferred[int]:
    """Connect to the daemon at ``url``; fires with the exit code once it closes."""
    from twisted.internet import reactor

    factory = TailFactory(url, event_id, raw, out, err)
    reactor.addSystemEventTrigger("before", "shutdown", factory.interrupted)
    context = None
    if factory.isSecure:
        trust = ssl.Certificate.loadPEM(Path(cafile).read_bytes()) if cafile else None
        context = ssl.optionsForClientTLS(factory.host, trustRoot=trust)
    connectWS(factory, context)
    return factory.done


def _subscribed(message: dict[str, Any], url: str) -> str:
    event = message.get("event")
    cursor = message.get("cursor")
    line = f"partysense-db tail: watching event {event} through {url} from seq {cursor}"
    tracks = message.get("tracks")
    if tracks is None:
        return line
    rows = [f"  track {t.get('tid')} {quoted(t.get('track'))} by {quoted(t.get('artist'))}: "
            f"{t.get('up')} up, {t.get('down')} down" for t in tracks]
    header = f"{line}; {quoted(message.get('title'))} has votes on {len(tracks)} tracks"
    return "\n".join([header, *rows])
