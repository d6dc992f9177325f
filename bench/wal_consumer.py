"""A WAL reader as the daemon's WAL source would run it, for the benchmarks.

    python -m bench.wal_consumer --dsn DSN [--streams N] [--publication partysense]

N :class:`~partysense.db.walstream.WalStream` s (temporary slots, one WAL
sender each) on the reactor, each decoding every transaction of the
publication with the pgoutput parser and acknowledging it at once, as
``--source wal`` daemons would. Prints ``ready`` once every stream runs,
and on SIGTERM or SIGINT one JSON line: transactions and row changes per
stream, its lag (the server's WAL end minus what it acknowledged), and the
process's CPU seconds and those of each stream's WAL sender (the PostgreSQL
backend that decodes the WAL for it: same machine only), so that the cost of
decoding can be set against the votes decoded. SIGUSR1 prints the same line
and goes on.
"""

from __future__ import annotations

import argparse
import json
import signal
import uuid
from typing import Any

import psutil
import psycopg2
from twisted.internet import defer

from bench.monitor import self_cpu_seconds
from partysense.db.waldecoder import Transaction
from partysense.db.walsetup import PUBLICATION
from partysense.db.walstream import WalStream


class Counted:
    def __init__(self) -> None:
        self.transactions = 0
        self.changes = 0
        self.lost: list[str] = []
        self.stream: WalStream | None = None

    def take(self, transaction: Transaction) -> None:
        self.transactions += 1
        self.changes += len(transaction.changes)
        assert self.stream is not None
        self.stream.acknowledge(transaction.end_lsn)

    def report(self) -> dict[str, Any]:
        stream = self.stream
        assert stream is not None
        return {"transactions": self.transactions, "changes": self.changes,
                "lag_bytes": max(0, stream.received_lsn - stream.acknowledged_lsn),
                "lost": self.lost}


def wal_senders(dsn: str, slots: list[str]) -> list[int | None]:
    """The WAL sender's pid of each slot."""
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT slot_name, active_pid FROM pg_replication_slots "
                           "WHERE slot_name = ANY(%s)", (slots,))
            pids = dict(cursor.fetchall())
    finally:
        connection.close()
    return [pids.get(slot) for slot in slots]


def sender_cpu(pid: int | None) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, ValueError, TypeError):
        return None  # another machine's, or gone
    return float(times.user + times.system)


def spent(now: float | None, start: float | None) -> float | None:
    return None if now is None or start is None else round(now - start, 3)


@defer.inlineCallbacks
def run(reactor: Any, dsn: str, streams: int, publication: str) -> Any:
    counted = [Counted() for _ in range(streams)]
    for each in counted:
        each.stream = WalStream(reactor, slot=f"bench_{uuid.uuid4().hex[:12]}",
                                publication=publication, on_transaction=each.take,
                                on_lost=each.lost.append)
        yield each.stream.start(dsn)
    start_cpu = self_cpu_seconds()
    senders = wal_senders(dsn, [each.stream.slot for each in counted if each.stream])
    sender_start = [sender_cpu(pid) for pid in senders]

    def report() -> None:
        print(json.dumps({
            "streams": [each.report() for each in counted],
            "cpu_seconds": round(self_cpu_seconds() - start_cpu, 3),
            "wal_sender_cpu_seconds": [
                spent(sender_cpu(pid), start) for pid, start in zip(senders, sender_start,
                                                                    strict=True)],
        }), flush=True)

    print("ready", flush=True)
    stopped: defer.Deferred[None] = defer.Deferred()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: reactor.callFromThread(stopped.callback, None))
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(report))
    yield stopped
    report()
    for each in counted:
        assert each.stream is not None
        each.stream.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wal_consumer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--publication", default=PUBLICATION)
    args = parser.parse_args(argv)
    from twisted.internet import task

    def go(reactor: Any) -> defer.Deferred[Any]:
        return run(reactor, args.dsn, args.streams, args.publication)

    task.react(go)


if __name__ == "__main__":
    main()
