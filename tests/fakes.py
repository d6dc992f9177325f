"""Fakes of the daemon's interfaces, for logic tests: one module, shared by all.

Each stands in for one interface a lower layer offers (the ``Protocol``
classes of partysense/dialects/dialect.py, partysense/core/hub.py,
partysense/reads/events.py, partysense/reads/sharedreads.py and
partysense/web/status.py); the check at the bottom has mypy hold each to its
interface (``mypy tests/fakes.py``), so a renamed method breaks here, not in
a test that happens to miss it. Two kinds:

- answer at once (``AtOnce``, ``NoEvents``, ``IdQueries``, ...): for tests of
  what a session says, where the database's timing is not the point;
- held until the test answers (``Held*``, ``ManualQueries``): for races, where
  the test decides what happens while a question is out.

Nothing here opens a socket or a database: time is a ``Clock`` the test owns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from partysense.core.change import Change
from partysense.db.changelog import Snapshot
from partysense.db.errors import NotConnected

Observer = Callable[[str, Change], None]


# -- the listener ---------------------------------------------------------------------


class NoDatabase:
    """The listener as the hub sees it (hub.Channels): LISTENs are only noted."""

    def __init__(self) -> None:
        self.wanted: set[str] = set()

    def listen(self, channel: str) -> None:
        self.wanted.add(channel)

    def unlisten(self, channel: str) -> None:
        self.wanted.discard(channel)

    def observe(self, observer: Observer) -> None:
        pass


class ListenedChannels:
    """The listener as the hub sees it (hub.Channels): which channels are
    listened, in order; unlistening one that is not listened fails."""

    def __init__(self) -> None:
        self.listened: list[str] = []
        self.observer: Observer | None = None

    def listen(self, channel: str) -> None:
        self.listened.append(channel)

    def unlisten(self, channel: str) -> None:
        self.listened.remove(channel)

    def observe(self, observer: Observer) -> None:
        self.observer = observer


class AlwaysListening:
    """A listener that is always there (dialect.Listening), its log read up to ``last_seq``."""

    connected = True
    reason = ""

    def __init__(self, last_seq: int | None) -> None:
        self.last_seq = last_seq

    def whenListening(self, channel: str) -> defer.Deferred[None]:
        return defer.succeed(None)

    def whenAvailable(self) -> defer.Deferred[None]:
        return defer.succeed(None)


class HeldListener(NoDatabase):
    """The listener both as the hub and as a session see it (hub.Channels and
    dialect.Listening): a LISTEN is answered when the test says (``answer``),
    and an UNLISTEN fails the waiters of its channel, as the real one does."""

    connected = True
    reason = ""

    def __init__(self, last_seq: int | None = 0) -> None:
        super().__init__()
        self.last_seq = last_seq
        self.listened: set[str] = set()
        self.waiting: dict[str, list[defer.Deferred[None]]] = {}
        self.observers: list[Observer] = []

    def observe(self, observer: Observer) -> None:
        self.observers.append(observer)

    def unlisten(self, channel: str) -> None:
        super().unlisten(channel)
        self.listened.discard(channel)
        for waiter in self.waiting.pop(channel, []):
            waiter.errback(NotConnected(f"{channel} is no longer wanted"))

    def whenListening(self, channel: str) -> defer.Deferred[None]:
        if channel in self.listened:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self.waiting.setdefault(channel, []).append(waiter)
        return waiter

    def whenAvailable(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def answer(self, channel: str) -> None:
        """The LISTEN of ``channel`` is answered: its waiters go on."""
        assert channel in self.wanted, f"{channel} was never LISTENed"
        self.listened.add(channel)
        for waiter in self.waiting.pop(channel, []):
            waiter.callback(None)

    def hand_on(self, channel: str, change: Change) -> None:
        """``change`` read from the log on ``channel``: every observer hears it."""
        self.last_seq = max(self.last_seq or 0, change.seq)
        for observer in list(self.observers):
            observer(channel, change)


class StatusListener:
    """The listener as the status page sees it (status.Listener), with changes to hand on."""

    state = "connected"
    reason = ""
    connected = True
    channels = frozenset({"event_1", "firehose"})
    reconnects = 2
    notifications = 7
    bad_notifications = 1
    reads = 3
    signed = True

    def __init__(self) -> None:
        self.observers: list[Observer] = []

    def observe(self, observer: Observer) -> None:
        self.observers.append(observer)

    def listen(self, channel: str) -> None:
        pass

    def unlisten(self, channel: str) -> None:
        pass

    def hear(self, channel: str, seq: int) -> None:
        change = Change(event_id=1, seq=seq, committed_at=None, op="insert", vote_id=seq,
                        track_id=1, up=True, prev=None, event_title=None, track_name=None,
                        artist=None, truncated=False, payload=b"")
        for observer in self.observers:
            observer(channel, change)


class ReadUpTo:
    """The listener as shared reads see it (sharedreads.Listener): says whether
    nothing after a seq has been handed on, as the test sets it."""

    def __init__(self) -> None:
        self.read_up_to = 0
        self.asked: list[tuple[str, int]] = []

    @property
    def last_seq(self) -> int | None:
        return self.read_up_to

    @last_seq.setter
    def last_seq(self, seq: int | None) -> None:
        self.read_up_to = seq or 0

    def complete_after(self, channel: str, seq: int) -> bool:
        self.asked.append((channel, seq))
        return self.read_up_to <= seq


class Following(ReadUpTo):
    """A listener that hands changes on to its observers, and says since when
    each channel has been LISTENed without a break."""

    def __init__(self) -> None:
        super().__init__()
        self.observers: list[Any] = []
        self.floors: dict[str, int] = {}

    def observe(self, observer: Any) -> None:
        self.observers.append(observer)

    def listening_from(self, channel: str, seq: int) -> bool:
        return channel in self.floors and self.floors[channel] <= seq

    def hand_on(self, channel: str, seq: int) -> Any:
        change = type("Change", (), {"seq": seq})()
        self.read_up_to = max(self.read_up_to, seq)
        for observer in self.observers:
            observer(channel, change)
        return change


# -- the events and the reads ---------------------------------------------------------


class NoEvents:
    """A directory (dialect.Events) that knows no event, and counts the questions."""

    def __init__(self) -> None:
        self.asked = 0

    def exists(self, event_id: int, look_again: bool = True) -> defer.Deferred[bool]:
        self.asked += 1
        return defer.succeed(False)


class HeldEvents:
    """An event directory (dialect.Events) whose answers wait until the test
    gives them, unless it was made with a fixed ``answer``."""

    def __init__(self, answer: bool | None = None) -> None:
        self.answer = answer
        self.asked: list[defer.Deferred[bool]] = []

    def exists(self, event_id: int, look_again: bool = True) -> defer.Deferred[bool]:
        if self.answer is not None:
            return defer.succeed(self.answer)
        waiting: defer.Deferred[bool] = defer.Deferred()
        self.asked.append(waiting)
        return waiting


class HeldReplays:
    """Replays (dialect.Reads.replay) that wait until the test answers them."""

    def __init__(self) -> None:
        self.asked: list[defer.Deferred[Any]] = []

    def replay(self, event_id: int | None, since: int) -> defer.Deferred[Any]:
        self.asked.append(defer.Deferred())
        return self.asked[-1]


class HeldReads(HeldReplays):
    """Snapshots, replays and the log's end (dialect.Reads), each answered when
    the test says: ``snapshots`` holds (event id, its Deferred) in order."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[tuple[int | None, defer.Deferred[Any]]] = []

    def snapshot(self, event_id: int | None) -> defer.Deferred[Any]:
        self.snapshots.append((event_id, defer.Deferred()))
        return self.snapshots[-1][1]

    def log_end(self) -> defer.Deferred[int]:
        return defer.succeed(0)


class AtOnce:
    """The listener, the change log and the events (dialect.Listening, Reads,
    Events): every answer ready at once."""

    connected = True
    reason = ""
    last_seq: int | None = 7

    def whenListening(self, channel: str) -> defer.Deferred[None]:
        return defer.succeed(None)

    def whenAvailable(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def snapshot(self, event_id: int | None) -> defer.Deferred[Any]:
        return defer.succeed((Snapshot(cursor=7, title="Friday"), []))

    def replay(self, event_id: int | None, since: int) -> defer.Deferred[Any]:
        raise AssertionError("not in these tests")

    def log_end(self) -> defer.Deferred[int]:
        return defer.succeed(7)

    def exists(self, event_id: int, look_again: bool = True) -> defer.Deferred[bool]:
        return defer.succeed(True)


# -- the queries ----------------------------------------------------------------------


class IdQueries:
    """event_event's ids, as events.IDS_QUERY reads them (events.Queries); the
    reads are counted."""

    connected = True

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.asked: list[Any] = []

    def runQuery(self, query: Any, params: Any = None) -> defer.Deferred[list[tuple]]:
        self.asked.append(params)
        after, limit = params
        return defer.succeed([(i,) for i in sorted(self.ids) if i > after][:limit])


class HeldQueries:
    """Queries (events.Queries) answered when the test says: ``asked`` holds
    (params, its Deferred) in order."""

    connected = True

    def __init__(self) -> None:
        self.asked: list[tuple[Any, defer.Deferred[list[tuple]]]] = []

    def runQuery(self, query: Any, params: Any = None) -> defer.Deferred[list[tuple]]:
        self.asked.append((params, defer.Deferred()))
        return self.asked[-1][1]


class ManualQueries:
    """Interactions (sharedreads.Queries) that answer when the test says."""

    def __init__(self) -> None:
        self.running: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def runInteraction(self, interaction: Any, *args: Any) -> defer.Deferred[Any]:
        answer: defer.Deferred[Any] = defer.Deferred()
        self.running.append((interaction, args, answer))
        return answer

    def runQuery(self, query: Any, params: Any = None) -> defer.Deferred[list[tuple]]:
        raise AssertionError("shared reads run interactions")


# -- a session's client ---------------------------------------------------------------


class RecordingClient:
    """A session's connection (dialect.Client): what it is sent, in order."""

    peer = "192.0.2.1"
    address = "192.0.2.1"
    is_live = True

    def __init__(self, url_token: str | None = None) -> None:
        self.url_token = url_token
        self.sent: list[dict[str, Any]] = []
        self.refused: list[tuple[str, str]] = []

    def send_frame(self, frame: Any) -> None:
        self.sent.append({"type": "frame"})

    def send_json(self, body: dict[str, Any]) -> None:
        self.sent.append(body)

    def stream(self, frames: Iterable[Any]) -> defer.Deferred[None]:
        for frame in frames:
            self.send_frame(frame)
        return defer.succeed(None)

    def too_slow(self) -> None:
        raise AssertionError("not in these tests")

    def log_refused(self, kind: str, message: str) -> None:
        self.refused.append((kind, message))

    def close_with(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed with {code}: {reason}")

    def types(self) -> list[str]:
        told, self.sent = self.sent, []
        return [body.get("error", body["type"]) for body in told]


if TYPE_CHECKING:  # each fake against the interface it stands in for: `mypy tests/fakes.py`
    from partysense.dialects.dialect import Client, Events, Reads

    def _conforms() -> None:
        # The connection-side fakes stand in for a part of core/interfaces.py's
        # ChangeSource and Queries only (what the code under test uses).
        reads: list[Reads] = [HeldReads(), AtOnce()]
        events: list[Events] = [NoEvents(), HeldEvents(), AtOnce()]
        client: Client = RecordingClient()
        del reads, events, client
