"""``GET /metrics``: the daemon's state in Prometheus' text format.

Almost every number already exists as an attribute (the listener counts
notifications and reconnects, the hub counts frames, the factory counts bad
inputs, Autobahn counts every byte it writes): :class:`LiveCollector` reads
them at scrape time, so the fan-out path pays nothing for metrics. Two
things are measured here instead:

- PostgreSQL's ``pg_notification_queue_usage()``, polled every few seconds
  on the query connection by :class:`QueueUsagePoller`, so a scrape never
  waits for the database (and still answers when it is down);
- the delay from a vote's commit (the change's ``committed_at``) to its
  frames leaving the daemon, observed once per change and channel by
  :meth:`DaemonMetrics.observe_delay`, a listener observer called after the hub.

Each daemon has its own ``CollectorRegistry`` (never the global one), so a
test can build several. docs/operations.md explains every metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from importlib import metadata
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from partysense.core.change import Change
from partysense.core.interfaces import ChangeSource, Queries
from partysense.dialects.dialect import ClientCounters
from partysense.web.walmetrics import relay_families

QUEUE_USAGE_QUERY = "SELECT pg_notification_queue_usage()"

# Seconds. Live changes take milliseconds; the long tail is what a listener
# that was away replays when it comes back.
DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# Kinds of bad input a client can send (partysense/core/errors.py), listed at 0
# from the start so that rate() works from the first one.
BAD_INPUT_KINDS = ("binary", "not_json", "wrong_shape", "bad_event_id", "too_big",
                   "unknown_event", "flood", "protocol_error", "origin_not_allowed")

# The daemon's own refusals, counted with the bad inputs: the database away
# (try_later; an SSE stream's unavailable), --max-clients (server_full), a
# failure of ours (internal, server_error). Listed at 0 as well, so that the
# alert that leaves them out (contrib/prometheus-alerts.yml) names kinds that
# /metrics has.
REFUSAL_KINDS = ("try_later", "server_full", "unavailable", "internal", "server_error")

# Counted with the bad inputs too; reported on their own.
SLOW = "too_slow"


class Hub(Protocol):
    frames_sent: int


class Retention(Protocol):
    trimmed: int


class Presence(Protocol):
    statements: int
    failures: int
    notices_sent: int


class Factory(Protocol):
    clients: Any  # a set of LiveProtocols
    counters: ClientCounters

    def clients_by_dialect(self) -> dict[str, int]: ...


class Site(Protocol):
    """The public port's HTTP side (partysense/web/httpguard.py)."""

    @property
    def waiting(self) -> Waiting: ...
    @property
    def refused(self) -> dict[str, int]: ...


class Waiting(Protocol):
    budget: int

    def __len__(self) -> int: ...


class SiteCollector(Collector):
    """The connections not yet upgraded, and those the HTTP side closed or refused."""

    def __init__(self, site: Site) -> None:
        self._site = site

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        waiting = self._site.waiting
        yield GaugeMetricFamily(
            "partysense_connections_waiting",
            "Connections accepted and not yet upgraded to a WebSocket or SSE stream "
            "(page and API requests, /healthz, handshakes on their way).",
            value=len(waiting))
        yield GaugeMetricFamily(
            "partysense_connections_waiting_limit",
            "Connections that may wait to upgrade at once: a share of the open-files limit; "
            "past it the oldest idle one is closed for a newcomer.",
            value=waiting.budget)
        refused = CounterMetricFamily(
            "partysense_connections_refused",
            "HTTP connections closed before upgrading, by reason: per_address (429, "
            "--max-connections-per-ip), idle_closed (408, for a newcomer), no_room (503), "
            "handshake_timeout, body (413).",
            labels=["reason"])
        for reason, count in sorted(self._site.refused.items()):
            refused.add_metric([reason], count)
        yield refused


class QueueUsagePoller(TimerService):
    """Asks PostgreSQL how full its notification queue is, every ``interval`` s.

    The queue is shared by the whole cluster; past 50% PostgreSQL warns, at
    100% every notifying commit fails. Polled on the query connection (one
    query every few seconds), never at scrape time.
    """

    log = Logger()

    def __init__(self, queries: Queries, clock: IReactorTime, interval: float = 5.0) -> None:
        super().__init__(interval, self._poll)
        self.clock = clock
        self._queries = queries
        self._clock = clock
        self._interval = interval
        self._asked_at: float | None = None
        self._first: Any = None
        self.usage: float | None = None

    def startService(self) -> None:
        super().startService()
        # Also ask as soon as the query connection is up, not a whole interval later.
        self._first = self._queries.whenConnected()
        self._first.addCallbacks(lambda _: self._poll(), lambda _: None)

    def stopService(self) -> Any:
        if self._first is not None and not self._first.called:
            self._first.cancel()
        return super().stopService()

    def _poll(self) -> None:
        if not self.running:
            return
        if not self._queries.connected:
            self.usage = None
            return
        asked_at = self._asked_at
        if asked_at is not None and self._clock.seconds() - asked_at < 6 * self._interval:
            return  # the last question is still out (a database that went silent)
        self._asked_at = self._clock.seconds()
        d = self._queries.runQuery(QUEUE_USAGE_QUERY)
        d.addCallbacks(self._answered, self._unanswered)

    def _answered(self, rows: list[tuple]) -> None:
        self._asked_at = None
        self.usage = float(rows[0][0])

    def _unanswered(self, failure: Any) -> None:
        self._asked_at = None
        self.usage = None
        self.log.debug("pg_notification_queue_usage() failed: {why}",
                       why=failure.getErrorMessage())


class LiveCollector(Collector):
    """Reads the daemon's counters when Prometheus scrapes; nothing is kept here."""

    def __init__(self, factory: Factory, hub: Hub, listener: ChangeSource, queries: Queries,
                 retention: Retention, queue: QueueUsagePoller) -> None:
        self._factory = factory
        self._hub = hub
        self._listener = listener
        self._queries = queries
        self._retention = retention
        self._queue = queue

    def describe(self) -> Iterable[Any]:
        return []  # families are only known at collect time; skip the describe pass

    def collect(self) -> Iterator[Any]:
        factory, hub, listener = self._factory, self._hub, self._listener
        clients = list(factory.clients)
        yield GaugeMetricFamily(
            "partysense_clients",
            "Clients connected: WebSockets (handshake done) and SSE streams.",
            value=len(clients))
        by_dialect = GaugeMetricFamily(
            "partysense_clients_by_protocol",
            "Clients connected, by dialect: seed (no subprotocol), v2, or sse "
            "(Server-Sent Events).",
            labels=["protocol"])
        for name, count in sorted(factory.clients_by_dialect().items()):
            by_dialect.add_metric([name], count)
        yield by_dialect
        yield GaugeMetricFamily(
            "partysense_channels_listened",
            "PostgreSQL channels (event_<id>, firehose) LISTENed on the listener connection.",
            value=len(listener.channels))
        yield CounterMetricFamily(
            "partysense_notifications",
            "Vote changes received from PostgreSQL on listened channels "
            "(live notifications and catch-up replay, once per change and channel).",
            value=listener.notifications)
        yield CounterMetricFamily(
            "partysense_bad_notifications",
            "Notifications on listened channels that were not one of our vote changes "
            "(not signed with one of our keys, not JSON, a field missing or of the wrong "
            "type, another event's change); dropped and logged, no query.",
            value=listener.bad_notifications)
        yield CounterMetricFamily(
            "partysense_change_log_reads",
            "Reads of the change log by the listener: catch-up after a reconnect, or "
            "notifications it could not hold; one per notification without the signing keys.",
            value=listener.reads)
        yield GaugeMetricFamily(
            "partysense_notifications_signed",
            "1 when notifications are believed by their signature, 0 when the listener "
            "cannot read the signing keys and reads the change log for each (docs/security.md).",
            value=int(listener.signed))
        yield CounterMetricFamily(
            "partysense_frames_sent", "Changes handed to clients (WebSocket frames, SSE events).",
            value=hub.frames_sent)
        yield CounterMetricFamily(
            "partysense_sent_bytes",
            "Bytes written to clients, WebSocket frame headers and SSE chunks included.",
            value=sum(client.bytes_sent for client in clients)
            + factory.counters.closed_client_bytes)
        yield CounterMetricFamily(
            "partysense_slow_clients_closed",
            "Clients closed (4008) because they stopped reading and their queue passed the limit.",
            value=factory.counters.slow_closed)
        bad = dict.fromkeys(BAD_INPUT_KINDS + REFUSAL_KINDS, 0)
        bad.update(factory.counters.bad_inputs)
        bad.pop(SLOW, None)
        bad_inputs = CounterMetricFamily(
            "partysense_bad_inputs",
            "Clients refused or closed for what they sent, by kind (docs/protocol.md); "
            "try_later: the database was unreachable, server_full: --max-clients.",
            labels=["kind"])
        for kind, count in sorted(bad.items()):
            bad_inputs.add_metric([kind], count)
        yield bad_inputs
        yield CounterMetricFamily(
            "partysense_listener_reconnects",
            "Times the listener connection came back after being lost.",
            value=listener.reconnects)
        yield CounterMetricFamily(
            "partysense_changes_trimmed",
            "Changes deleted from partysense_change by --retention.",
            value=self._retention.trimmed)
        yield GaugeMetricFamily(
            "partysense_listener_up",
            "1 while the listener is connected to PostgreSQL and caught up, else 0.",
            value=1 if listener.connected else 0)
        yield GaugeMetricFamily(
            "partysense_query_connection_up",
            "1 while the connection for clients' queries (v2 snapshots, event lookups, "
            "/api/events) is up, else 0.",
            value=1 if self._queries.connected else 0)
        if self._queue.usage is not None and listener.connected:
            yield GaugeMetricFamily(
                "partysense_notification_queue_usage",
                "pg_notification_queue_usage(): the fraction (0 to 1) of PostgreSQL's "
                "notification queue in use, polled every few seconds.",
                value=self._queue.usage)
        if listener.relay is not None:
            yield from relay_families(listener.relay)


def _version() -> str:
    try:
        return metadata.version("partysense-live")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Info(Collector):
    def collect(self) -> Iterator[Any]:
        yield InfoMetricFamily("partysense", "The partysense-live version running.",
                               value={"version": _version()})


class MetricsPage(Resource):
    """``/metrics``, rendered in the reactor thread.

    Not prometheus_client's MetricsResource: that one collects in a thread
    pool, where reading the reactor's sets of clients would race with it.
    A scrape only reads attributes, so it is quick enough to run inline.

    Only the exact path answers: ``/metrics/``, ``/metrics/x`` or
    ``/%6Detrics`` would slip past a proxy rule written for ``/metrics``.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        if request.uri.split(b"?", 1)[0] != b"/metrics":
            request.setResponseCode(404)
            request.setHeader("content-type", "text/plain; charset=utf-8")
            return b"not found\n"
        encode, content_type = choose_encoder(request.getHeader("accept") or "")
        request.setHeader("content-type", content_type)
        request.setHeader("cache-control", "no-store")
        return encode(self._registry)


class DaemonMetrics:
    """The registry of one daemon and the two things it measures itself."""

    def __init__(self, clock: IReactorTime, registry: CollectorRegistry | None = None) -> None:
        self.clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        self.delivery_delay = Histogram(
            "partysense_delivery_delay_seconds",
            "From a vote change's commit in PostgreSQL to its frames being written to the "
            "subscribed clients, once per change and channel. Uses both machines' clocks.",
            buckets=DELAY_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_Info())

    def observe_delay(self, channel: str, change: Change) -> None:
        """Observe how long ago ``change`` was committed (a listener observer,
        registered after the hub, so the time includes the fan-out)."""
        if change.committed_at is not None:
            # Clocks of two machines: a few ms of skew may make it negative.
            self.delivery_delay.observe(max(0.0, self.clock.seconds() - change.committed_at))

    def watch(self, factory: Factory, hub: Hub, listener: ChangeSource, queries: Queries,
              retention: Retention, queue_interval: float = 5.0) -> QueueUsagePoller:
        """Collect the daemon's counters and time its deliveries; returns the
        notification-queue poller, a service."""
        listener.observe(self.observe_delay)
        poller = QueueUsagePoller(queries, self.clock, queue_interval)
        self.registry.register(
            LiveCollector(factory, hub, listener, queries, retention, poller))
        return poller

    def watch_presence(self, presence: Presence) -> None:
        """Collect presence's statements (one per --presence-interval) and notices."""
        self.registry.register(PresenceCollector(presence))

    def watch_site(self, site: Site) -> None:
        """Collect the public port's connections waiting to upgrade, and its refusals."""
        self.registry.register(SiteCollector(site))

    def resource(self) -> Resource:
        return MetricsPage(self.registry)


class PresenceCollector(Collector):
    """Presence (partysense/db/presence.py): its reports, and the counts it sent."""

    def __init__(self, presence: Presence) -> None:
        self._presence = presence

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        presence = self._presence
        yield CounterMetricFamily(
            "partysense_presence_reports",
            "Presence statements run (one per --presence-interval at most).",
            value=presence.statements)
        yield CounterMetricFamily(
            "partysense_presence_report_failures",
            "Presence statements that failed (counts not updated).",
            value=presence.failures)
        yield CounterMetricFamily(
            "partysense_presence_notices",
            "Presence messages handed to clients (a count changed, one per subscriber).",
            value=presence.notices_sent)
