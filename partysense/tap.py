"""``twistd partysense-live``: its options and the tree of services it runs.

    InOrder                       stops its children one at a time, from the bottom up
    ├── CollectorService          gc.freeze() of what startup made
    ├── EmbeddedPostgresService   only when no database is named
    ├── ListenerService           the one LISTEN connection, reconnecting
    ├── QueryService              the connection clients' questions use
    ├── RetentionService          trims the change log
    ├── PresenceService           watchers per event, across daemons (--presence-interval)
    ├── EventDirectory            the ids of every event
    ├── QueueUsagePoller          pg_notification_queue_usage() for /metrics
    ├── StreamServerEndpointService  the web port: WebSocket, page, health
    ├── Rates                     frames and votes a second, for --admin-port's /status
    ├── StreamServerEndpointService  --admin-port: /metrics, a detailed /healthz, /status
    ├── ClientsService            closes every client (1001) at shutdown
    ├── DemoPartyService          with --demo (the default on the embedded DB)
    └── SystemdNotifier           READY=1 / STOPPING=1 under systemd (Type=notify)

Everything is wired here, before anything starts (docs/architecture.md says how).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from partysense.core.budgets import budgets_for
from partysense.core.hub import LINGER, Hub
from partysense.db import dsn as dsnlib
from partysense.db.changelog import TALLY_QUERY, WAL_TALLY_QUERY
from partysense.db.demo import DemoPartyService
from partysense.db.embedded import database_for
from partysense.db.presence import INTERVAL as PRESENCE_INTERVAL
from partysense.db.presence import PresenceService
from partysense.db.queries import QueryService
from partysense.db.retention import RetentionService
from partysense.db.source import KINDS, WAL, make_source
from partysense.dialects import tokens
from partysense.dialects.dialect import ClientCounters, MakeSession, Shared
from partysense.dialects.seed import SeedSession
from partysense.dialects.v2 import SUBPROTOCOL, V2Session
from partysense.process import workers
from partysense.process.collector import CollectorService
from partysense.process.limits import clients_that_fit, raise_open_files_limit, waiting_budget
from partysense.process.ordered import InOrder
from partysense.process.signals import handle_signals_on_the_loop
from partysense.process.systemd import SystemdNotifier
from partysense.reads.events import EventDirectory
from partysense.reads.sharedreads import SharedReads
from partysense.web.headers import SecurityHeaders, frame_ancestors_from
from partysense.web.metrics import DaemonMetrics
from partysense.web.resources import make_admin_site, make_site
from partysense.web.sse import KEEPALIVE, Streams
from partysense.web.status import Rates, status_page
from partysense.wire.clients import ClientRegistry
from partysense.wire.goodbye import ClientsService
from partysense.wire.protocol import Limits, LiveFactory
from partysense.wire.waiting import Waiting

log = Logger()


def endpoint_description(port: str) -> str:
    """A bare port number becomes ``tcp:PORT``; anything else is an endpoint string.

    TCP and TLS ports also get a deep accept queue unless they name one:
    when a venue's Wi-Fi comes back, every phone reconnects at once, and
    Twisted's default of 50 pending connections would turn many of them away
    (--workers listens with the same 1024).
    """
    if port.isdigit():
        return f"tcp:{port}:backlog=1024"
    if port.split(":", 1)[0] in ("tcp", "tcp6", "ssl") and "backlog=" not in port:
        return f"{port}:backlog=1024"
    return port


# A frame held longer than this is no longer "live" for anybody watching.
MAX_WRITE_DELAY_MS = 1000.0


def write_delay_ms(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--write-delay wants milliseconds (e.g. 20), not {text!r}") from None


def secret_encoding(text: str) -> str:
    if text not in tokens.SECRET_ENCODINGS:
        raise ValueError(f"--token-secret-encoding is raw or base64, not {text!r}")
    return text


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Push PartySense votes from PostgreSQL to WebSocket clients. With no --dsn and "
        "no $PARTYSENSE_DSN, an embedded PostgreSQL is started with a demo party."
    )
    optParameters = [
        ["port", "p", "18854",
         "Where to listen: a port number or a Twisted endpoint "
         "(tcp:18854:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=cert.pem)."],
        ["dsn", None, None,
         "PostgreSQL to listen to, as a libpq URI or key=value words "
         f"(default: ${dsnlib.DSN_ENVIRONMENT_VARIABLE}; none: the embedded database)."],
        ["source", None, "listen",
         "Where changes come from: listen (the voters' triggers log and NOTIFY each change; "
         "the default) or wal (logical decoding: no trigger on the voters' commits; run "
         "`partysense-db install --source wal` first)."],
        ["data-dir", None, None,
         "Data directory of the embedded PostgreSQL "
         "(default: /var/tmp/partysense-live-UID/pgdata)."],
        ["demo-rate", None, 2.0, "Simulated votes per second with --demo.", float],
        ["retention", None, 86400.0,
         "Seconds of change log kept for catching up after an outage.", float],
        ["max-message-bytes", None, 4096, "Largest message a client may send.", int],
        ["max-clients", None, 100_000,
         "Most clients at once; the next is closed with 1013.", int],
        ["max-subscriptions", None, 32, "Most subscriptions on one v2 connection.", int],
        ["max-messages-per-second", None, 20.0,
         "Most messages a second one client may send (bursts of twice that); 4029 past it.",
         float],
        ["max-queue-bytes", None, 1024 * 1024,
         "Most bytes queued for a client that is not reading; 4008 past it.", int],
        ["ping-interval", None, 30.0,
         "Seconds between keepalive pings; a client silent as long again is dropped.", float],
        ["grace", None, 10.0,
         "Seconds a subscription waits for the database while the daemon connects, or "
         "after it lost the connection, before it is refused (1013 / unavailable).", float],
        ["write-delay", None, 0.0,
         "Milliseconds a client's frames may wait to leave together in one send(): "
         "less CPU per frame at the cost of that much latency (default 0: at once).",
         write_delay_ms],
        ["handshake-timeout", None, 10.0,
         "Seconds an HTTP connection may stay idle or unfinished before the upgrade.", float],
        ["allowed-origins", None, "",
         "Comma-separated Origins allowed to connect, e.g. https://party.example "
         "(default: any)."],
        ["frame-ancestors", None, "'none'",
         "Who may show the page in a frame: 'none', 'self', or origins (comma-separated), "
         "e.g. https://dj.example; sent as CSP frame-ancestors (and X-Frame-Options)."],
        ["max-connections-per-ip", None, 1024,
         "Most WebSocket clients from one address (behind --trusted-proxies: the "
         "forwarded one); a venue's guests may share one NAT address.", int],
        ["trusted-proxies", None, 0,
         "Proxies in front (nginx, HAProxy) whose X-Forwarded-For is believed, so logs "
         "show clients' addresses (default: 0, the header is ignored).", int],
        ["admin-port", None, None,
         "Serve /metrics and a detailed /healthz here, apart from the public port: a "
         "port number (127.0.0.1 only) or an endpoint, e.g. tcp:9854:interface=127.0.0.1. "
         "Default: none (/metrics on the public port; its /healthz says ok or not)."],
        ["token-secret-file", None, None,
         "Require signed tokens (HS256 JWT) for every subscription; the file holds the "
         "shared secret: its bytes, surrounding whitespace stripped, at least 32 "
         "(docs/security.md)."],
        ["token-secret-encoding", None, "raw",
         "How the secret file holds the secret: raw (its bytes) or base64 (decoded; "
         "base64url too).", secret_encoding],
        ["token-public-key-file", None, None,
         "Require signed tokens checked by this PEM public key: RSA (RS256, RS384, RS512) "
         "or EC (P-256: ES256, P-384: ES384, P-521: ES512)."],
        ["token-audience", None, None,
         "Accept only tokens whose aud claim names this (then required); without it a "
         "token with an aud is refused."],
        ["linger", None, LINGER,
         "Seconds a channel stays LISTENed after its last subscriber left, so that a "
         "client coming back (or cycling through events) costs no LISTEN and no "
         "snapshot (0: UNLISTEN at once).", float],
        ["sse-keepalive", None, KEEPALIVE,
         "Seconds between the comments that keep idle SSE streams open through proxies.",
         float],
        ["presence-interval", None, PRESENCE_INTERVAL,
         "Seconds between this daemon's reports of how many watch each event (one "
         "statement each, whatever the number of clients); clients see the total of "
         "every daemon within two of them (0: no presence).", float],
        ["workers", None, 1,
         "Processes sharing the port, each with its own LISTEN connection (tcp: ports).",
         int],
    ]
    optFlags = [
        ["demo", None, "Simulate a party that votes (default with the embedded database)."],
        ["no-demo", None, "No simulated party, even on the embedded database."],
    ]

    def postOptions(self) -> None:
        try:
            self["dsn"] = dsnlib.dsn_from(self["dsn"])
        except dsnlib.DSNError as error:
            raise usage.UsageError(f"--dsn: {error}") from None
        self["port"] = endpoint_description(self["port"])
        if self["demo-rate"] <= 0:
            raise usage.UsageError("--demo-rate must be positive")
        if self["trusted-proxies"] < 0:
            raise usage.UsageError("--trusted-proxies cannot be negative")
        if self["sse-keepalive"] <= 0:
            raise usage.UsageError("--sse-keepalive must be positive")
        if self["linger"] < 0:
            raise usage.UsageError("--linger cannot be negative")
        if self["presence-interval"] != 0 and not 0.1 <= self["presence-interval"] <= 600:
            raise usage.UsageError("--presence-interval is 0 (off) or 0.1 to 600 seconds")
        if self["grace"] < 0:
            raise usage.UsageError("--grace cannot be negative")
        if self["source"] not in KINDS:
            raise usage.UsageError(f"--source is one of {', '.join(KINDS)}")
        if not 0 <= self["write-delay"] <= MAX_WRITE_DELAY_MS:
            raise usage.UsageError(
                f"--write-delay must be between 0 and {MAX_WRITE_DELAY_MS} milliseconds")
        if self["max-connections-per-ip"] < 1:
            raise usage.UsageError("--max-connections-per-ip must be at least 1")
        try:
            self["security-headers"] = SecurityHeaders(
                frame_ancestors_from(self["frame-ancestors"]))
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        if self["demo"] and self["no-demo"]:
            raise usage.UsageError("--demo and --no-demo contradict each other")
        self["embedded"] = self["dsn"] is None
        self["run-demo"] = bool(self["demo"]) or (self["embedded"] and not self["no-demo"])
        try:
            self["tokens"] = tokens.from_files(
                self["token-secret-file"], self["token-public-key-file"],
                secret_encoding=self["token-secret-encoding"], audience=self["token-audience"])
        except ValueError as error:
            raise usage.UsageError(f"tokens: {error}") from None
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be at least 1")
        if self["workers"] > 1:
            workers.listening_address(self["port"])  # only a tcp: port can be shared
        if self["admin-port"] and self["admin-port"].isdigit():
            self["admin-port"] = f"tcp:{self['admin-port']}:interface=127.0.0.1"
        if self["workers"] > 1 and self["admin-port"]:
            try:
                workers.admin_port_for(self["admin-port"], self["workers"])
            except ValueError as error:
                raise usage.UsageError(str(error)) from None


def normalise_origin(origin: str) -> str:
    """Autobahn compares Origins with their port; browsers omit default ports."""
    origin = origin.strip().rstrip("/")
    scheme, _, rest = origin.partition("://")
    if not rest or ":" in rest or "*" in rest:
        return origin
    port = {"http": 80, "https": 443}.get(scheme.lower())
    return f"{origin}:{port}" if port else origin


def limits_from(options: Options) -> Limits:
    origins = tuple(
        normalise_origin(o) for o in options["allowed-origins"].split(",") if o.strip())
    return Limits(
        max_clients=options["max-clients"],
        max_subscriptions=options["max-subscriptions"],
        max_message_bytes=options["max-message-bytes"],
        messages_per_second=options["max-messages-per-second"],
        max_queue_bytes=options["max-queue-bytes"],
        ping_interval=options["ping-interval"],
        allowed_origins=origins,
        max_connections_per_ip=options["max-connections-per-ip"],
        write_delay=options["write-delay"] / 1000,
    )


def waiting_for(options: Options, limits: Limits, factory: LiveFactory,
                open_files: int) -> Waiting:
    """The books of the connections not yet upgraded (partysense/wire/waiting.py):
    their share of the open-files limit, and --max-connections-per-ip counting
    them with the address's clients. Behind --trusted-proxies every connection
    comes from a proxy, so only their number in all is bounded."""
    per_address = None if options["trusted-proxies"] else limits.max_connections_per_ip
    return Waiting(waiting_budget(open_files), max_per_address=per_address,
                   upgraded_from=factory.connected_from)


def dialect_table(shared: Shared) -> dict[str | None, MakeSession]:
    """Subprotocol to session maker; None: a client that asks for no subprotocol."""
    return {None: partial(SeedSession, shared=shared),
            SUBPROTOCOL: partial(V2Session, shared=shared)}


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    # Twisted logs inside its SIGTERM handler, which can deadlock with the log
    # file's lock: ours only queue its handler (process/signals.py).
    reactor.callWhenRunning(handle_signals_on_the_loop, reactor)
    open_files = raise_open_files_limit()  # every client is an open file
    if options["workers"] > 1:
        return workers.make_supervisor(options, reactor)
    # Stopped one at a time, last added first (process/ordered.py). First in:
    # what the assembly made is frozen before anything else starts.
    top = InOrder()
    CollectorService().setServiceParent(top)

    wal = options["source"] == WAL
    dsn, where = database_for(options["dsn"], options["data-dir"], top, reactor, wal=wal)

    listener = make_source(options["source"], dsn, reactor, grace=options["grace"])
    listener.setServiceParent(top)
    queries = QueryService(dsn, reactor, grace=options["grace"])
    queries.setServiceParent(top)
    retention = RetentionService(queries, reactor, options["retention"])
    retention.setServiceParent(top)
    hub = Hub(listener, reactor, linger=options["linger"])
    presence = None
    if options["presence-interval"]:
        presence = PresenceService(queries, hub, reactor, options["presence-interval"])
        presence.setServiceParent(top)
    metrics = DaemonMetrics(reactor)

    limits = limits_from(options)
    limits.max_clients = clients_that_fit(limits.max_clients, open_files)
    counters = ClientCounters()
    reads = SharedReads(queries, reactor, listener=listener, follow=True,
                        tally_query=WAL_TALLY_QUERY if wal else TALLY_QUERY)
    events = EventDirectory(queries, reactor)
    events.setServiceParent(top)
    shared = Shared(hub=hub, listener=listener, reads=reads, events=events,
                    counters=counters, clock=reactor,
                    max_subscriptions=limits.max_subscriptions, tokens=options["tokens"],
                    budgets=budgets_for(limits.max_connections_per_ip), presence=presence)
    # The log started over (docs/exactness.md §4): the kept reads go, then every
    # subscription that can takes a fresh snapshot (read afresh, not kept).
    listener.on_start_over(reads.start_over)
    listener.on_start_over(hub.start_over)
    # Every client, WebSocket or SSE stream; behind --trusted-proxies, by forwarded address.
    registry = ClientRegistry(reactor, limits, counters, options["trusted-proxies"])
    # Each batch of notifications is sent as soon as it is handed on, not a turn later.
    listener.before_batch(registry.writer.begin_batch)
    listener.after_batch(registry.writer.end_of_batch)
    factory = LiveFactory(dialect_table(shared), reactor, registry=registry)
    queue = metrics.watch(factory, hub, listener, queries, retention)
    queue.setServiceParent(top)
    if presence is not None:
        metrics.watch_presence(presence)
    admin_port = options["admin-port"]
    waiting = waiting_for(options, limits, factory, open_files)
    site = make_site(factory, listener, queries,
                     metrics=None if admin_port else metrics.resource(), clock=reactor,
                     handshake_timeout=options["handshake-timeout"], tokens=options["tokens"],
                     headers=options["security-headers"],
                     streams=Streams(registry, shared, keepalive=options["sse-keepalive"]),
                     waiting=waiting, exists=shared.event_exists)
    metrics.watch_site(site)
    strports.service(options["port"], site, reactor=reactor).setServiceParent(top)
    if admin_port:
        rates = Rates(hub, listener, reactor)
        rates.setServiceParent(top)
        admin = make_admin_site(factory, listener, queries, metrics.resource(), reactor,
                                status=status_page(factory, hub, listener, queries, queue, rates))
        strports.service(admin_port, admin, reactor=reactor).setServiceParent(top)
    # Added after the port, so stopped before it: clients hear 1001 first.
    ClientsService(factory, reactor).setServiceParent(top)

    if options["run-demo"]:
        DemoPartyService(dsn, options["demo-rate"], reactor).setServiceParent(top)
    # Last: started once the port listens, stopped first (STOPPING=1).
    SystemdNotifier(lambda: defer.gatherResults(
        [listener.whenConnected(), queries.whenConnected()], consumeErrors=True)
    ).setServiceParent(top)

    log.info(
        "partysense-live listening on {port}, database: {where}, demo: {demo}, "
        "changes from: {source}, change log kept {retention:g} s; limits: "
        "{max_clients} clients ({per_ip} connections per address, upgraded or not), "
        "{waiting} connections waiting to upgrade, {max_subscriptions} subscriptions "
        "each, messages up to "
        "{max_message} bytes and {rate:g}/s, {max_queue} bytes queued per slow client, "
        "ping every {ping:g} s; per address {subscribes:g} subscribes at once then "
        "{subscribe_rate:g}/s, {replay_rows:g} rows replayed at once then {replay_rate:g}/s; "
        "channels linger {linger:g} s; Origins allowed: {origins}; the page may be framed by: "
        "{frame_ancestors}; tokens: {tokens}; "
        "/metrics and detailed health: {admin}.",
        port=options["port"], where=where, embedded=options["embedded"],
        demo=options["run-demo"], source=options["source"], retention=options["retention"],
        max_clients=limits.max_clients, per_ip=limits.max_connections_per_ip,
        waiting=waiting.budget,
        max_subscriptions=limits.max_subscriptions,
        max_message=limits.max_message_bytes, rate=limits.messages_per_second,
        max_queue=limits.max_queue_bytes, ping=limits.ping_interval,
        subscribes=shared.budgets.subscribes.burst, subscribe_rate=shared.budgets.subscribes.rate,
        replay_rows=shared.budgets.replay_rows.burst,
        replay_rate=shared.budgets.replay_rows.rate, linger=options["linger"],
        origins=", ".join(limits.allowed_origins) or "any (no --allowed-origins given)",
        frame_ancestors=" ".join(options["security-headers"].frame_ancestors),
        tokens=options["tokens"].describe(),
        admin=admin_port or "on the public port (no --admin-port)",
    )
    return top
