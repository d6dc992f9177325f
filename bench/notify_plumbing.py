"""What one notification costs a listener before any of our code runs: the event
path of each bridge, from the socket to an observer that only counts.

    python -m bench.notify_plumbing                    # embedded PostgreSQL
    python -m bench.notify_plumbing --dsn postgresql://... --rate 500 --rounds 3

Per round, in turn: the daemon's path (txpostgres and psycopg2 on Twisted's
epoll reactor, through partysense's ``PgConnection``, whose observers are
called without a Deferred each) and the asyncio reference's (asyncpg, on
uvloop when installed). Each LISTENs in a process of its own while another
process NOTIFYs ``--rate`` times a second a payload the size of a signed vote;
the listener's CPU (getrusage) over ``--seconds`` is divided by what it heard.
Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.database import server
from bench.monitor import self_cpu_seconds

CHANNEL = "plumbing"
PAYLOAD = ("ps1 1 " + "a" * 64 + ' {"eid" : 1, "event" : "Friday", "track" : "One More Time", '
           '"artist" : "Daft Punk", "tid" : 2, "up" : true, "op" : "insert", "vote" : 3, '
           '"prev" : null, "seq" : 10, "truncated" : false, "ts" : 1764892800.123}')
SIDES = ("twisted", "asyncpg")


def report(start_cpu: float, heard: int) -> None:
    """A listener's answer to its parent: CPU µs per notification, and how many it heard."""
    print(f"{(self_cpu_seconds() - start_cpu) / heard * 1e6:.2f} {heard}", flush=True)


def listen_twisted(dsn: str, seconds: float) -> None:
    from twisted.internet import defer, reactor, task

    from partysense.db.txpostgres_adapter import PgConnection

    heard = [0]

    @defer.inlineCallbacks
    def run() -> Any:
        connection = PgConnection(reactor, on_lost=lambda why: None)
        yield connection.connect(dsn)
        connection.addNotifyObserver(lambda notify: heard.__setitem__(0, heard[0] + 1))
        yield connection.runOperation(f"LISTEN {CHANNEL}")
        print("ready", flush=True)
        while not heard[0]:
            yield task.deferLater(reactor, 0.01, lambda: None)
        start, first = self_cpu_seconds(), heard[0]
        yield task.deferLater(reactor, seconds, lambda: None)
        report(start, heard[0] - first)
        reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()


def listen_asyncpg(dsn: str, seconds: float) -> None:
    import asyncpg

    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def run() -> None:
        heard = [0]
        connection = await asyncpg.connect(**asyncpg_arguments(dsn))
        await connection.add_listener(CHANNEL, lambda *_: heard.__setitem__(0, heard[0] + 1))
        print("ready", flush=True)
        while not heard[0]:
            await asyncio.sleep(0.01)
        start, first = self_cpu_seconds(), heard[0]
        await asyncio.sleep(seconds)
        report(start, heard[0] - first)

    asyncio.run(run())


def asyncpg_arguments(dsn: str) -> dict[str, Any]:
    """libpq's DSN (key=value words or a URI) as asyncpg's keyword arguments."""
    from psycopg2.extensions import parse_dsn

    words = parse_dsn(dsn)
    names = {"host": "host", "port": "port", "user": "user", "password": "password",
             "dbname": "database"}
    return {names[key]: value for key, value in words.items() if key in names}


def notify(dsn: str, rate: float, seconds: float) -> None:
    import psycopg2

    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        start, sent = time.monotonic(), 0
        while time.monotonic() < start + seconds:
            cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, PAYLOAD))
            sent += 1
            delay = start + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    connection.close()


def one_round(dsn: str, side: str, rate: float, seconds: float) -> tuple[float, int]:
    """CPU per notification (µs) of one listener, and how many it heard while measured."""
    me = [sys.executable, "-m", "bench.notify_plumbing"]
    listener = subprocess.Popen([*me, "--child", side, "--dsn", dsn, "--seconds", str(seconds)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        if listener.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {side} listener did not start")
        sender = subprocess.Popen([*me, "--child", "notify", "--dsn", dsn, "--rate", str(rate),
                                   "--seconds", str(seconds + 2)])
        line = listener.stdout.readline().split()
        sender.wait()
    finally:
        listener.wait()
    return float(line[0]), int(line[1])


def main(argv: list[str] | None = None) -> dict[str, list[tuple[float, int]]] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a database to LISTEN on (default: embedded)")
    parser.add_argument("--rate", type=float, default=500.0, help="notifications a second")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=(*SIDES, "notify"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    children = {"twisted": lambda: listen_twisted(args.dsn, args.seconds),
                "asyncpg": lambda: listen_asyncpg(args.dsn, args.seconds),
                "notify": lambda: notify(args.dsn, args.rate, args.seconds)}
    if args.child:
        children[args.child]()
        return None
    with server(args.dsn) as dsn:
        results: dict[str, list[tuple[float, int]]] = {side: [] for side in SIDES}
        for round_ in range(args.rounds):
            for side in SIDES:
                results[side].append(one_round(dsn, side, args.rate, args.seconds))
                micros, heard = results[side][-1]
                print(f"round {round_ + 1}, {side}: {micros:.1f} µs a notification "
                      f"({heard} heard)", flush=True)
    medians = {side: statistics.median(micros for micros, _ in values)
               for side, values in results.items()}
    print(f"\n{args.rate:g} notifications/s, {args.seconds:g} s, medians of {args.rounds}:")
    for side in SIDES:
        print(f"  {side}: {medians[side]:.1f} µs of CPU a notification")
    print(f"  twisted / asyncpg: {medians['twisted'] / medians['asyncpg']:.2f}")
    return results


if __name__ == "__main__":
    main()
