"""JSON logs (``twistd --logger partysense.process.logs.json_observer``) and the start line."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from psycopg2.extensions import parse_dsn
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness.daemon import Daemon, twistd_command
from partysense.process.logs import JSONLinesObserver, capped_file_observer, flatten, json_observer


class JSONLogDaemon(Daemon):
    """The daemon as a log shipper would run it: -n, JSON lines on stdout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_path = self.log_path.with_suffix(".jsonl")  # its stdout

    def _spawn(self) -> None:
        args = twistd_command() + [
            "-n", "--pidfile", "", "--logger", "partysense.process.logs.json_observer",
            "partysense-live", "--port", f"tcp:{self.port}:interface=127.0.0.1",
            "--admin-port", f"tcp:{self.admin_port}:interface=127.0.0.1",
            "--dsn", str(self.dsn), *self.extra,
        ]
        env = dict(os.environ)
        env.pop("PARTYSENSE_DSN", None)
        with open(self.log_path, "ab") as stdout:
            self.process = subprocess.Popen(args, cwd=self.workdir, env=env, stdout=stdout,
                                            stdin=subprocess.DEVNULL)


def records(daemon: Daemon) -> list[dict[str, Any]]:
    lines = daemon.log().splitlines()
    assert lines, "no log lines at all"
    return [json.loads(line) for line in lines]  # every line is one JSON object


@pytest.mark.daemon
def test_json_logs_carry_named_fields(db_dsn: str, tmp_path: Path) -> None:
    with JSONLogDaemon(db_dsn, tmp_path, "--max-clients", "500") as daemon:
        with connect(daemon.ws_url, open_timeout=10) as bad:
            bad.send("not json")
            with pytest.raises(ConnectionClosed):
                bad.recv(timeout=10)
    logged = records(daemon)

    start = [r for r in logged if r["message"].startswith("partysense-live listening on")]
    assert len(start) == 1, "one start line, not two"
    line = start[0]
    assert (line["level"], line["namespace"]) == ("info", "partysense.tap")
    assert line["port"] == "tcp:0:interface=127.0.0.1:backlog=1024"  # as given, with the backlog
    assert line["embedded"] is False and line["demo"] is False
    assert parse_dsn(db_dsn)["dbname"] in line["where"]
    assert line["max_clients"] == 500 and line["max_message"] == 4096
    assert line["retention"] == 86400.0
    assert line["time"].endswith("Z")
    password = parse_dsn(db_dsn).get("password")
    if password:
        assert password not in daemon.log()

    closing = [r for r in logged if r.get("kind") == "not_json"]
    assert len(closing) == 1 and closing[0]["code"] == 1007 and closing[0]["peer"]
    assert any(r["namespace"] == "partysense.db.listener.ListenerService" for r in logged)


# -- the observer alone --------------------------------------------------------


def observe(emit: Any) -> dict[str, Any]:
    out = io.StringIO()
    publisher = LogPublisher(JSONLinesObserver(out))
    emit(Logger(namespace="test", observer=publisher))
    (line,) = out.getvalue().splitlines()
    return json.loads(line)


@pytest.mark.logic
def test_fields_that_are_not_json_become_their_repr() -> None:
    record = observe(lambda log: log.warn("Odd {thing}", thing={1, 2}, count=3))
    assert record["message"] == "Odd {1, 2}" and record["thing"] == "{1, 2}"
    assert (record["level"], record["count"], record["namespace"]) == ("warn", 3, "test")


@pytest.mark.logic
def test_a_failure_comes_with_its_traceback() -> None:
    failure = Failure(ZeroDivisionError("division by zero"))
    record = observe(lambda log: log.failure("Sum failed for {who}", failure, who="x"))
    assert record["level"] == "critical" and record["who"] == "x"
    assert "ZeroDivisionError" in record["traceback"] and record["error"] == "division by zero"


@pytest.mark.logic
def test_a_circular_field_still_logs_the_sentence() -> None:
    loop: list[Any] = []
    loop.append(loop)
    record = observe(lambda log: log.info("Loop {n}", n=1, loop=loop))
    assert record["message"] == "Loop 1" and "loop" not in record


@pytest.mark.logic
def test_legacy_events_keep_only_their_sentence() -> None:
    event = {"message": ("hello", "world"), "isError": 0, "system": "-", "time": 0.0,
             "log_time": 0.0, "log_level": LogLevel.info, "log_namespace": "log_legacy",
             "log_format": "{log_text}", "log_text": "hello world"}
    assert flatten(event) == {"time": "1970-01-01T00:00:00.000Z", "level": "info",
                              "namespace": "log_legacy", "message": "hello world"}


@pytest.mark.logic
def test_the_factory_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    observer = json_observer()
    observer({"log_time": 0.0, "log_level": LogLevel.info, "log_namespace": "t",
              "log_format": "hi {who}", "who": "you"})
    assert json.loads(capsys.readouterr().out)["message"] == "hi you"


@pytest.mark.daemon
@pytest.mark.parametrize(("trusted", "logged_peer"), [
    ("1", "203.0.113.7"),       # the address our one proxy saw
    ("0", "tcp4:127.0.0.1:"),   # the header is anybody's to forge: ignored
])
def test_peers_behind_a_proxy(db_dsn: str, tmp_path: Path, trusted: str,
                              logged_peer: str) -> None:
    forged_and_real = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
    with Daemon(db_dsn, tmp_path, "--trusted-proxies", trusted) as daemon:
        with connect(daemon.ws_url, additional_headers=forged_and_real,
                     open_timeout=10) as client:
            client.send("not json")
            with pytest.raises(ConnectionClosed):
                client.recv(timeout=10)
    closing = [line for line in daemon.log().splitlines() if "(not_json, code 1007)" in line]
    assert len(closing) == 1 and f"Closing {logged_peer}" in closing[0]
    assert "198.51.100.1" not in closing[0]


@pytest.mark.logic
def test_capped_files_keep_a_bounded_number_of_old_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTYSENSE_LOG_FILE", str(tmp_path / "twistd.log"))
    monkeypatch.setenv("PARTYSENSE_LOG_MAX_BYTES", "2000")
    monkeypatch.setenv("PARTYSENSE_LOG_FILES", "3")
    log = Logger(observer=capped_file_observer())
    for number in range(1000):  # about 80 kB of lines: forty files' worth
        log.info("line {number} of a flood", number=number)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == ["twistd.log", "twistd.log.1", "twistd.log.2", "twistd.log.3"]
    assert all(path.stat().st_size <= 2000 + 200 for path in tmp_path.iterdir())
    assert "line 999 of a flood" in (tmp_path / "twistd.log").read_text()


@pytest.mark.logic
def test_capped_files_refuse_a_bad_setting_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTYSENSE_LOG_FILES", "ten")
    with pytest.raises(SystemExit, match="PARTYSENSE_LOG_FILES must be a positive whole number"):
        capped_file_observer()
