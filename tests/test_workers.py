"""``--workers 2``: two processes on one port, supervised, stopped together."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
import pytest
from twisted.python import usage
from websockets.sync.client import ClientConnection, connect

from harness.daemon import ADMIN_STARTING, Daemon, wait_for
from partysense.process.workers import (
    admin_port_for,
    child_arguments,
    for_worker,
    listening_address,
)
from partysense.tap import Options
from tests.support import Party


def workers_of(daemon: Daemon) -> list[psutil.Process]:
    """The live workers: a killed one is a zombie until the parent reaps it, and one
    may be gone between the listing and the look at its command line."""
    assert daemon.process is not None
    workers = []
    for child in psutil.Process(daemon.process.pid).children():
        try:
            if (child.status() != psutil.STATUS_ZOMBIE
                    and "partysense.process.workerproc" in " ".join(child.cmdline())):
                workers.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return workers


def received(client: ClientConnection, vote_id: int | None = None) -> bool:
    """Whether a frame (about ``vote_id``, if given) is waiting for this client."""
    try:
        while True:
            message = json.loads(client.recv(timeout=0.2))
            if vote_id is None or message["vote"] == vote_id:
                return True
    except TimeoutError:
        return False


def all_live(clients: list[ClientConnection], party: Party, event_id: int,
             track_id: int) -> None:
    """Vote until every client has had a frame: then every subscription is live."""
    waiting = set(range(len(clients)))

    def every_client_heard_one() -> bool:
        party.vote(event_id, track_id)
        waiting.difference_update({n for n in waiting if received(clients[n])})
        return not waiting
    wait_for(every_client_heard_one, 30, "every client to receive a warm-up vote")


@pytest.mark.daemon
def test_two_workers_survive_a_killed_one_and_stop_together(db_dsn: str, party: Party,
                                                            tmp_path: Path) -> None:
    event_id, track_id = party.event("Workers"), party.track()
    daemon = Daemon(db_dsn, tmp_path, "--workers", "2").start()
    try:
        first = wait_for(lambda: (w := workers_of(daemon)) and len(w) == 2 and w, 30,
                         "two workers")
        victim = first[0].pid
        first[0].send_signal(signal.SIGKILL)
        again = wait_for(lambda: (w := workers_of(daemon)) and len(w) == 2
                         and victim not in {p.pid for p in w} and w, 30,
                         "the killed worker to be replaced")
        daemon.wait_healthy()

        with ExitStack() as stack:
            clients = [stack.enter_context(connect(daemon.ws_url, open_timeout=10))
                       for _ in range(8)]
            for client in clients:
                client.send(json.dumps({"event": event_id}))
            all_live(clients, party, event_id, track_id)
            served = sum(
                1 for worker in again for c in worker.net_connections("tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == daemon.port)
            assert served == len(clients)  # every client is held by one of the workers

            vote_id = party.vote(event_id, track_id, up=False)
            assert all(wait_for(lambda c=c: received(c, vote_id), 10, "the vote")
                       for c in clients)

        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        try:  # a deadline: the supervisor and its workers stop together, promptly
            daemon.process.wait(5)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"twistd --workers still running 5 s after SIGTERM:\n"
                                 f"{daemon.log()[-3000:]}") from None
        assert not [p for p in again if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        daemon.stop()


@pytest.mark.logic
def test_only_a_tcp_port_can_be_shared() -> None:
    assert listening_address("tcp:18854:interface=127.0.0.1:backlog=50") == (
        socket.AF_INET, "127.0.0.1", 18854, 50)
    assert listening_address("tcp:port=8080") == (socket.AF_INET, "", 8080, 1024)
    assert listening_address("tcp6:8080:interface=\\:\\:1")[:3] == (socket.AF_INET6, "::1", 8080)
    for description in ("ssl:443:privateKey=key.pem", "unix:/tmp/sock", "tcp:http"):
        with pytest.raises(usage.UsageError):
            listening_address(description)
    with pytest.raises(usage.UsageError, match="tcp"):
        Options().parseOptions(["--workers", "2", "--port", "unix:/tmp/x", "--dsn", "dbname=x"])


@pytest.mark.logic
def test_workers_get_the_parents_options_but_not_its_port_database_or_demo() -> None:
    options = Options()
    options.parseOptions(["--workers", "3", "--port", "tcp:9999", "--dsn", "dbname=x",
                          "--max-clients", "7", "--demo", "--retention", "60"])
    arguments = child_arguments(options)
    assert arguments[arguments.index("--max-clients") + 1] == "7"
    assert arguments[arguments.index("--retention") + 1] == "60.0"
    assert not {"--port", "--dsn", "--workers", "--demo", "--data-dir"} & set(arguments)


@pytest.mark.logic
@pytest.mark.parametrize(("given", "number", "worker_gets"), [
    ("tcp:9854:interface=127.0.0.1", 1, "tcp:9854:interface=127.0.0.1"),
    ("tcp:9854:interface=127.0.0.1", 3, "tcp:9856:interface=127.0.0.1"),
    ("tcp6:9854", 2, "tcp6:9855"),
    ("tcp:0:interface=127.0.0.1", 4, "tcp:0:interface=127.0.0.1"),
])
def test_each_worker_serves_its_admin_port_counting_up(given: str, number: int,
                                                         worker_gets: str) -> None:
    assert admin_port_for(given, number) == worker_gets
    options = Options()
    options.parseOptions(["--workers", "4", "--dsn", "dbname=x", "--admin-port", given])
    arguments = for_worker(child_arguments(options), number)
    assert arguments[arguments.index("--admin-port") + 1] == worker_gets


@pytest.mark.logic
def test_a_bare_admin_port_number_counts_up_on_the_loopback() -> None:
    options = Options()
    options.parseOptions(["--workers", "2", "--dsn", "dbname=x", "--admin-port", "9854"])
    arguments = for_worker(child_arguments(options), 2)
    assert arguments[arguments.index("--admin-port") + 1] == "tcp:9855:interface=127.0.0.1"


@pytest.mark.logic
def test_with_workers_an_admin_port_that_cannot_count_up_is_refused() -> None:
    with pytest.raises(usage.UsageError, match="admin-port must be a tcp: port"):
        Options().parseOptions(["--workers", "2", "--dsn", "dbname=x",
                                "--admin-port", "unix:/run/partysense-admin.sock"])


def get(port: int, path: str) -> tuple[int, Any]:
    """Status and body (JSON when it is) of a GET on the loopback."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            status, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def ok(answer: tuple[int, Any]) -> tuple[int, Any] | None:
    return answer if answer[0] == 200 else None


@pytest.mark.daemon
def test_every_worker_answers_metrics_and_health_on_its_own_admin_port(
        db_dsn: str, tmp_path: Path) -> None:
    with Daemon(db_dsn, tmp_path, "--workers", "2",
                "--admin-port", "tcp:0:interface=127.0.0.1") as daemon:
        ports = wait_for(lambda: sorted(set(map(int, ADMIN_STARTING.findall(daemon.log()))))
                         if len(set(ADMIN_STARTING.findall(daemon.log()))) == 2 else None,
                         30, "both workers' admin ports in the log")
        pids = set()
        for port in ports:
            # Each worker's admin port opens before its database connections are up.
            status, health = wait_for(lambda port=port: ok(get(port, "/healthz")), 30,
                                      f"worker health on {port}")
            assert status == 200 and health["listener"] and health["queries"]
            pids.add(health["pid"])
            status, metrics = get(port, "/metrics")
            assert status == 200 and "partysense_listener_up 1.0" in metrics
        assert pids == {worker.pid for worker in workers_of(daemon)}
        # The public port leaves /metrics to the admin ports, whichever worker answers.
        assert get(daemon.port, "/metrics")[0] == 404
