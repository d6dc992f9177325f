"""Server-Sent Events: ``GET /events/<id>/stream`` and ``GET /events/ALL/stream``.

For consumers that are not WebSocket browsers: an OBS overlay, ``curl -N``,
a script, a network whose proxy strips upgrades. Each change is one event::

    id: 1240
    event: change
    data: {"type":"change","sub":1,"eid":1,...,"seq":1240,...}

``data`` is the v2 dialect's change message, the very bytes
(``v2frames.change_json``). A reconnect with ``Last-Event-ID`` (browsers send it
themselves) or ``?last_event_id=`` replays what it missed from the change log,
then goes live, with no gap and no duplicate: as a v2 resume, the stream is
subscribed to the hub first and holds live changes until the replay is out.
Without it, the stream starts now, at the log's newest ``seq``, which it
sends as ``id:`` at once, so that even a client that saw no change can
resume exactly.

Streams are clients like the WebSocket ones, in the same registry
(partysense/wire/clients.py): the same --max-clients and
--max-connections-per-ip, the same sink (outbox bounded by --max-queue-bytes,
per-turn writer: partysense/wire/sink.py), closed at shutdown. Events are
encoded once per change for every stream (``Delivery.frame``), chunk framing
of HTTP/1.1 included, their JSON shared with the v2 frame, and written around
twisted.web's Request (which would copy and frame each write again;
partysense/adapters/twisted_web_adapter.py): docs/protocol.md, "Server-Sent
Events". The request is admitted (or refused) before it becomes a stream, by
the resource in partysense/web/sseresource.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Request

from partysense.adapters.twisted_web_adapter import (
    is_chunked,
    last_response,
    raw_transport,
    written_around,
)
from partysense.core import budgets
from partysense.core.addresses import network_of
from partysense.core.change import Change
from partysense.core.channels import channel_for
from partysense.core.errors import TOO_SLOW
from partysense.core.hub import Delivery
from partysense.core.notice import Notice
from partysense.db.errors import NotConnected, Overloaded, QueryRefused
from partysense.dialects.catchup import CatchUp, past
from partysense.dialects.dialect import Shared
from partysense.dialects.tokens import Grant
from partysense.dialects.v2frames import change_json
from partysense.web.sseframes import (
    KEEPALIVE_LINE,
    TOKEN_EXPIRED,
    chunk,
    event_bytes,
    plain,
    presence_bytes,
    sse_chunked_frame,
    sse_frame,
)
from partysense.web.sserequest import Refused, answer, compact, head_bytes
from partysense.wire.clients import ClientRegistry
from partysense.wire.sink import Sink
from partysense.wire.upgrade import taken_over

KEEPALIVE = 15.0      # seconds between ": keepalive" comments (proxies close idle streams)
RETRY_MS = 2000       # how long browsers wait before reconnecting


class Streams:
    """Every SSE stream of the port: the shared daemon, and one keepalive for all."""

    def __init__(self, clients: ClientRegistry, shared: Shared,
                 keepalive: float = KEEPALIVE) -> None:
        self.clients = clients
        self.shared = shared
        self.open: set[Stream] = set()
        self._interval = keepalive
        self._beat = LoopingCall(self._keepalive)
        self._beat.clock = shared.clock

    def entered(self, stream: Stream) -> None:
        self.open.add(stream)
        if not self._beat.running:
            self._beat.start(self._interval, now=False)

    def left(self, stream: Stream) -> None:
        self.open.discard(stream)
        if not self.open and self._beat.running:
            self._beat.stop()

    def _keepalive(self) -> None:
        for stream in list(self.open):
            stream.keepalive()


class Stream:
    """One client's event stream; a hub subscriber and one of the registry's clients."""

    dialect = "sse"
    _log = Logger()

    def __init__(self, streams: Streams, request: Request, event_id: int | None,
                 since: int | None, grant: Grant, address: str, reserved: int = 0) -> None:
        self._streams = streams
        self._shared = streams.shared
        self._clients = streams.clients
        self._request = request
        self.event_id = event_id
        self.channel = channel_for(event_id)
        self._since = since
        self._grant = grant
        self.address = address
        self.wants_presence = False  # ?presence=1
        self._reserved = reserved  # replay rows taken from the address's budget
        self._replayed = 0         # and those the replay sent
        self._started = False             # the 200 and its headers are out
        self._gone = False
        self._over_when_started = False  # the log started over while it started
        self._expiry: Any = None
        self._transport: Any = raw_transport(request)
        self._opened_at = streams.shared.clock.seconds()
        self._ended_by: tuple[int, str] = (200, "the client went away")  # for the access log
        # Twisted chunks a response of unknown length to an HTTP/1.1 client;
        # known now, so that the hub groups the stream with its like and frames
        # each change once per format (partysense/core/hub.py).
        if request.clientproto == b"HTTP/1.1":
            self.wire_format, self._encode, self._wrap = "sse/chunked", sse_chunked_frame, chunk
        else:
            self.wire_format, self._encode, self._wrap = "sse", sse_frame, plain
        self._sink = Sink(self._transport, self._clients.writer,
                          self._clients.limits.max_queue_bytes, lambda: self.is_live,
                          self.too_slow)
        self.outbox = self._sink.outbox
        # Live changes wait until the replay is out (partysense/dialects/catchup.py);
        # the hub calls the gate itself.
        self._gate = CatchUp(self.outbox.send, self.too_slow)
        self.deliver = self._gate.deliver

    @property
    def bytes_sent(self) -> int:
        return self._sink.bytes_sent

    @property
    def is_live(self) -> bool:
        return self._started and not self._gone

    def open(self) -> None:
        """Counted from now on; the stream starts once the database has answered."""
        self._clients.enter(self, self.address)
        self._streams.entered(self)
        self._request.streamed = True  # type: ignore[attr-defined]  # one line, at the end
        self._request.notifyFinish().addBoth(self._closed)
        taken_over(self._request.channel)
        if self._grant.expires != math.inf:
            clock = self._shared.clock
            self._expiry = clock.callLater(max(0.0, self._grant.expires - clock.seconds()),
                                           self._expired)
        self._start().addErrback(self._failed)

    @defer.inlineCallbacks
    def _start(self) -> Any:
        shared = self._shared
        yield shared.listener.whenAvailable()  # --grace while the daemon connects
        if self.event_id is not None and not (
                yield shared.event_exists(self.address, self.event_id)):
            raise Refused(404, "unknown_event", f"event {self.event_id} does not exist")
        if self._gone:
            return
        shared.hub.subscribe(self.channel, self)  # first: live changes wait in the gate
        yield shared.listener.whenListening(self.channel)
        reset = None
        replayed: list[Change] = []
        if self._since is None:
            snapshot, _ = yield shared.reads.snapshot(None)  # the cursor only: max(seq)
            cursor = snapshot.cursor
        else:
            replay = yield shared.reads.replay(self.event_id, self._since)
            self._replayed = len(replay.changes) or 1
            if replay.snapshot is not None:  # trimmed, too far behind, or another log
                reset, cursor = replay.snapshot, replay.snapshot.cursor
            else:
                cursor, replayed = self._since, replay.changes
        if self._gone:
            return
        self._begin(cursor, reset)
        self._tell_presence()
        replayed, last = past(cursor, replayed)
        yield self.outbox.stream(self._replay(replayed))
        self._settle()
        self._gate.caught_up(last)
        if self._over_when_started:
            self.start_over()

    def _begin(self, cursor: int, reset: Any) -> None:
        request = self._request
        request.setResponseCode(200)
        request.setHeader("content-type", "text/event-stream")
        request.setHeader("cache-control", "no-store")
        request.setHeader("x-accel-buffering", "no")  # nginx: pass each event at once
        # The connection ends with the stream: idle keep-alive connections would
        # outlive the handshake deadline with no timer at all.
        last_response(request)
        # The id sets the browser's Last-Event-ID without an event: a client that
        # saw no change yet still resumes from here.
        head = b"retry: %d\nid: %d\n\n" % (RETRY_MS, cursor)
        if reset is not None:
            body = reset.message(self.event_id, None, reset=True)
            head += b"id: %d\nevent: reset\ndata: %s\n\n" % (cursor, compact(body))
        request.write(head)  # the status line and headers, then this
        if is_chunked(request) != (self.wire_format == "sse/chunked"):
            # Twisted decided otherwise than __init__ foresaw: a bug, logged by
            # _failed, and the stream ends (the client reconnects and resumes).
            raise RuntimeError(f"stream framed as {self.wire_format!r}, but "
                               f"Twisted chunked={is_chunked(request)}")
        request.registerProducer(self.outbox, True)  # the channel pauses it when full
        self._started = True

    def _replay(self, changes: list[Change]) -> Iterator[bytes]:
        for change in changes:
            yield self._wrap(event_bytes(change.seq, change_json(self.channel, change)))

    def encode(self, delivery: Delivery) -> bytes:
        """The event's bytes for every stream of this format, made once per change."""
        return self._encode(delivery)

    def encode_notice(self, notice: Notice) -> bytes:
        """A presence event's bytes for every stream of this format (partysense/hub.py)."""
        return self._wrap(presence_bytes(notice))

    def notice(self, frame: bytes) -> None:
        # Before the stream starts it is dropped: the count it gets then is fresher.
        if self.is_live and self.wants_presence:
            self.outbox.send(frame)

    def _tell_presence(self) -> None:
        presence = self._shared.presence
        if presence is not None and self.event_id is not None and self.wants_presence:
            self.outbox.send(self.encode_notice(presence.current(self.event_id)))

    def keepalive(self) -> None:
        if self.is_live:
            self.outbox.send(self._wrap(KEEPALIVE_LINE))

    # -- ending -----------------------------------------------------------------

    def too_slow(self) -> None:
        """Not reading, its backlog past --max-queue-bytes: dropped (it reads no goodbye)."""
        if self._gone:
            return
        self.outbox.discard()
        self._ended_by = (TOO_SLOW, "too_slow")
        counters = self._clients.counters
        counters.slow_closed += 1
        counters.bad_input("too_slow")
        self._clients.quiet.info(
            network_of(self.address), "Closing SSE stream of {peer} (too_slow): over {limit} "
            "bytes queued", peer=self.address, limit=self._clients.limits.max_queue_bytes)
        self.abort()

    def close_with(self, code: int, reason: str) -> None:
        """Shutdown (1001) and the like: the stream ends; a browser reconnects by itself."""
        if self._gone:
            return
        self._ended_by = (code, reason)
        if not self._started:
            self._refuse(Refused(503, "unavailable", reason))
            return
        self._end()

    def start_over(self) -> None:
        """The log started over (partysense/core/hub.py): the stream ends, and the
        browser, reconnecting with its Last-Event-ID, gets an ``event: reset`` with a
        fresh snapshot, as any cursor the log no longer continues does."""
        if self._gone:
            return
        if not self._started:  # its replay may have been read before the reset
            self._over_when_started = True
            return
        self._ended_by = (200, "start_over")
        self._end()

    def abort(self) -> None:
        """Gone at once, no goodbye (at shutdown, one that did not close in time)."""
        self._transport.abortConnection()

    def _expired(self) -> None:
        self._expiry = None
        if self._gone:
            return
        if not self._started:  # still waiting for the database (--grace)
            self._refuse(Refused(401, "token_expired", "the token has expired"))
            return
        self.outbox.send(self._wrap(TOKEN_EXPIRED))
        self._end()

    def _end(self) -> None:
        request = self._request
        self._sink.flush()  # our bytes before the last chunk
        request.unregisterProducer()
        written_around(request, self.bytes_sent)  # for the access log
        self._gone = True
        request.finish()

    def _failed(self, failure: Any) -> None:
        if self._gone:
            return
        if failure.check(Refused):
            refusal = failure.value
        elif failure.check(Overloaded):
            refusal = Refused(503, "unavailable", "the server is busy; retry soon")
        elif failure.check(NotConnected):
            refusal = Refused(503, "unavailable", "the database is unreachable right now; "
                                                  "retry soon")
        else:
            if failure.check(QueryRefused):
                self._log.error("The database refused an SSE stream's query: {error}",
                                error=str(failure.value))
            else:
                self._log.failure("SSE stream for {peer} failed", failure, peer=self.address)
            refusal = Refused(500, "server_error", "the server could not read the event's "
                                                   "history; see its log")
        self._ended_by = (refusal.status, refusal.kind)
        if self._started:
            self._end()  # the client reconnects and resumes from its Last-Event-ID
        else:
            self._refuse(refusal)

    def _refuse(self, refusal: Refused) -> None:
        # The handshake deadline no longer watches this connection (open()):
        # it must not stay behind as an idle keep-alive one.
        last_response(self._request)
        self._clients.counters.bad_input(refusal.kind)
        self._ended_by = (refusal.status, refusal.kind)
        self._clients.quiet.info(
            network_of(self.address), "Refused an SSE stream from {peer} ({kind}): {reason}",
            peer=self.address, kind=refusal.kind, reason=refusal.message)
        self._gone = True
        answer(self._request, refusal)

    def _settle(self) -> None:
        """The replay is out (or never will be): what it did not send goes back
        to the address's budget."""
        if self._reserved:
            budgets.replayed(self._shared.budgets, self.address, self._shared.clock.seconds(),
                             self._reserved, self._replayed)
            self._reserved = 0

    def _closed(self, result: Any) -> None:
        """The response is over (finished, or the connection lost): let go of everything."""
        self._gone = True
        self._settle()
        self._gate.stop()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self._shared.hub.unsubscribe(self.channel, self)
        self._clients.leave(self, self.address)
        self._streams.left(self)
        self._clients.counters.closed_client_bytes += self.bytes_sent
        request = self._request
        self._clients.access_log.connection_ended(
            "sse", self.address, request.uri, self._shared.clock.seconds() - self._opened_at,
            self.bytes_sent, head_bytes(request), *self._ended_by)
        self._sink.bytes_sent = 0
        self.outbox.close()
