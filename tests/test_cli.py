"""``twistd partysense-live`` as a sysadmin starts it: ports, DSNs, pidfile, logfile, daemon."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.python import usage

from harness.daemon import Daemon, twistd_command, wait_for
from partysense.db import sqlfiles
from partysense.tap import Options, endpoint_description
from tests.test_dbcli import partysense_db, refused_port

SECRET = "hunter2-never-logged"


class Twistd(Daemon):
    """twistd with exactly the arguments given; ``{port}`` is replaced by 0.

    The kernel picks the port and twistd logs it ("Site starting on PORT"):
    :meth:`wait_listening` reads it from ``{logfile}``. ``{pidfile}`` and
    ``{logfile}`` are this daemon's files.
    """

    def __init__(self, workdir: Path, twistd_args: list[str], plugin_args: list[str],
                 env: dict[str, str] | None = None) -> None:
        super().__init__(None, workdir, env=env)
        self.output_path = self.log_path.with_suffix(".out")
        fill = {"port": 0, "pidfile": self.pid_path, "logfile": self.log_path}
        self.args = [a.format(**fill) for a in twistd_args + ["partysense-live"] + plugin_args]

    def uses_admin_port(self) -> bool:
        return "--admin-port" in self.args

    def start(self, wait: bool = True) -> Twistd:
        """Start twistd; with ``wait``, wait until it listens and is healthy."""
        self.spawn()
        if wait:
            self.wait_listening()
            self.wait_healthy()
        return self

    def _spawn(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        with self.output_path.open("wb") as output:
            self.process = subprocess.Popen(
                twistd_command() + self.args, cwd=self.workdir, env=env,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)

    def wait_listening(self, timeout: float = 30.0) -> int:
        """The port twistd reports listening on; fails, with its output, if it exits first."""
        try:
            return super().wait_listening(timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.output()}") from None

    def output(self) -> str:
        """What twistd wrote to stdout and stderr (its usage errors)."""
        try:
            return self.output_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""


FOREGROUND = ["-n", "--pidfile", "{pidfile}", "--logfile", "{logfile}"]


def env_without_dsn(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PARTYSENSE_DSN"}
    env.update(extra)
    return env


def as_uri(dsn: str, password: str | None = None) -> str:
    """The same database as a postgresql:// URI (a Unix socket goes in ?host=)."""
    params = parse_dsn(dsn)
    userinfo = quote(params.get("user", ""), safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    userinfo += "@" if userinfo else ""
    host, port, dbname = params.get("host", ""), params.get("port"), params["dbname"]
    if host.startswith("/"):
        query = f"?host={host}" + (f"&port={port}" if port else "")
        return f"postgresql://{userinfo}/{quote(dbname)}{query}"
    where = host + (f":{port}" if port else "")
    return f"postgresql://{userinfo}{where}/{quote(dbname)}"


def as_words(dsn: str) -> str:
    return make_dsn(**parse_dsn(dsn))


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


# -- --port ---------------------------------------------------------------------


@pytest.mark.daemon
def test_bare_port_listens_on_every_interface(db_dsn: str, tmp_path: Path) -> None:
    with Twistd(tmp_path, FOREGROUND, ["--port", "{port}", "--dsn", db_dsn]) as daemon:
        assert accepts("127.0.0.2", daemon.port)  # not only 127.0.0.1
        assert "listening on tcp:0:backlog=1024," in daemon.log()  # served as tcp:PORT


@pytest.mark.daemon
def test_endpoint_string_port(db_dsn: str, tmp_path: Path) -> None:
    plugin_args = ["--port", "tcp:{port}:interface=127.0.0.1", "--dsn", db_dsn]
    with Twistd(tmp_path, FOREGROUND, plugin_args) as daemon:
        assert accepts("127.0.0.1", daemon.port)
        assert not accepts("127.0.0.2", daemon.port)


@pytest.mark.daemon
def test_unusable_port_is_a_clear_error(db_dsn: str, tmp_path: Path) -> None:
    daemon = Twistd(tmp_path, FOREGROUND, ["--port", "nonsense:1", "--dsn", db_dsn])
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(30) != 0
    assert "nonsense" in daemon.output() + daemon.log()


# -- --dsn ----------------------------------------------------------------------


@pytest.mark.daemon
@pytest.mark.parametrize("form", [as_uri, as_words], ids=["uri", "keywords"])
def test_dsn_forms(db_dsn: str, tmp_path: Path, form: Any) -> None:
    dsn = form(db_dsn)
    with Twistd(tmp_path, FOREGROUND, ["--port", "tcp:{port}:interface=127.0.0.1",
                                       "--dsn", dsn]) as daemon:
        log = daemon.log()
        assert parse_dsn(db_dsn)["dbname"] in log
        assert "EMBEDDED" not in log


@pytest.mark.daemon
@pytest.mark.embedded_only  # the embedded server listens on a Unix socket only
def test_unix_socket_host(db_dsn: str, tmp_path: Path) -> None:
    socket_dir = parse_dsn(db_dsn)["host"]
    assert Path(socket_dir).is_dir()
    uri = as_uri(db_dsn)
    assert f"?host={socket_dir}" in uri
    with Twistd(tmp_path, FOREGROUND, ["--port", "tcp:{port}:interface=127.0.0.1",
                                       "--dsn", uri]) as daemon:
        assert socket_dir in daemon.log()


@pytest.mark.daemon
def test_dsn_from_the_environment(db_dsn: str, tmp_path: Path) -> None:
    env = env_without_dsn(PARTYSENSE_DSN=as_uri(db_dsn))
    with Twistd(tmp_path, FOREGROUND, ["--port", "tcp:{port}:interface=127.0.0.1"],
                env=env) as daemon:
        log = daemon.log()
        assert parse_dsn(db_dsn)["dbname"] in log
        assert "EMBEDDED" not in log


@pytest.mark.daemon
@pytest.mark.embedded_only  # its trust authentication accepts a made-up password
@pytest.mark.parametrize("where", ["option", "environment"])
def test_password_never_logged(db_dsn: str, tmp_path: Path, where: str) -> None:
    for dsn in (as_uri(db_dsn, password=SECRET), make_dsn(db_dsn, password=SECRET)):
        assert parse_dsn(dsn)["password"] == SECRET
        psycopg2.connect(dsn).close()  # trust authentication: accepted
        if where == "option":
            daemon = Twistd(tmp_path, FOREGROUND, ["--port", "tcp:{port}:interface=127.0.0.1",
                                                   "--dsn", dsn], env=env_without_dsn())
        else:
            daemon = Twistd(tmp_path, FOREGROUND, ["--port", "tcp:{port}:interface=127.0.0.1"],
                            env=env_without_dsn(PARTYSENSE_DSN=dsn))
        with daemon:
            health = daemon.health()
        assert daemon.log() and SECRET not in daemon.log()
        assert SECRET not in daemon.output()
        assert health is not None and SECRET not in str(health)


@pytest.mark.daemon
@pytest.mark.parametrize("dsn", [
    f"postgresql://someone:{SECRET}@127.0.0.1:{{port}}/x",
    f"host=127.0.0.1 port={{port}} dbname=x password={SECRET}",
    f"host=127.0.0.1 port={{port}} dbname=x sslpassword={SECRET}",
])
def test_password_not_logged_when_the_database_is_unreachable(tmp_path: Path, dsn: str) -> None:
    with refused_port() as port:
        daemon = Twistd(tmp_path, FOREGROUND, ["--port", "tcp:{port}:interface=127.0.0.1",
                                               "--admin-port", "tcp:0:interface=127.0.0.1",
                                               "--dsn", dsn.format(port=port)],
                        env=env_without_dsn())
        daemon.start(wait=False)
        try:
            assert daemon.wait_listening()
            health = wait_for(
                lambda: (h := daemon.health()) and "refused" in h[1]["reason"] and h,
                30, "/healthz to say why the database is unreachable")
            assert health[0] == 503
            wait_for(lambda: "refused" in daemon.log(), 10, "the failure to be logged")
        finally:
            daemon.stop()
    assert SECRET not in daemon.log() + str(health) + daemon.output()


@pytest.mark.daemon
@pytest.mark.parametrize("dsn", [
    f"postgresql://someone:{SECRET}@[::1/x",   # libpq would echo this URI whole
    f"host=127.0.0.1 password='{SECRET}",
])
def test_unparseable_dsn_is_refused_without_the_password(tmp_path: Path, dsn: str) -> None:
    daemon = Twistd(tmp_path, ["-n"], ["--dsn", dsn], env=env_without_dsn())
    daemon.start(wait=False)
    assert daemon.process is not None and daemon.process.wait(30) != 0
    output = daemon.output()
    assert "--dsn" in output and SECRET not in output


# -- twistd's own options ---------------------------------------------------------


@pytest.mark.daemon
def test_pidfile_and_logfile(db_dsn: str, tmp_path: Path) -> None:
    daemon = Twistd(tmp_path, FOREGROUND, ["--port", "tcp:{port}:interface=127.0.0.1",
                                           "--dsn", db_dsn]).start()
    try:
        assert daemon.process is not None
        assert int(daemon.pid_path.read_text().strip()) == daemon.process.pid
        assert "partysense-live" in daemon.log()
        assert daemon.output() == ""  # everything went to the logfile
    finally:
        code = daemon.stop()
    # twistd stops cleanly, then exits by the signal it got (so its parent knows why).
    assert code in (0, -signal.SIGTERM)
    assert not daemon.pid_path.exists()
    assert "Server Shut Down" in daemon.log()


@pytest.mark.daemon
def test_daemonizes_without_n(db_dsn: str, tmp_path: Path) -> None:
    daemon = Twistd(tmp_path, ["--pidfile", "{pidfile}", "--logfile", "{logfile}"],
                    ["--port", "tcp:{port}:interface=127.0.0.1", "--dsn", db_dsn])
    launcher = subprocess.run(twistd_command() + daemon.args, cwd=tmp_path,
                              env=env_without_dsn(), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=60)
    assert launcher.returncode == 0, launcher.stdout + launcher.stderr
    pid = int(wait_for(lambda: daemon.pid_path.exists() and daemon.pid_path.read_text(), 30,
                       "the pidfile").strip())
    try:
        daemon.wait_listening()  # its port, from the log
        wait_for(lambda: (daemon.health() or (0,))[0] == 200, 30, "the daemon to be healthy")
        assert running(pid)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not running(pid), 20, "the daemon to exit after SIGTERM")
    wait_for(lambda: not daemon.pid_path.exists(), 5, "the pidfile to be removed")
    assert "Server Shut Down" in daemon.log()


# -- a database without the install step ----------------------------------------------


@pytest.mark.daemon
def test_missing_install_step_is_a_503_that_names_the_fix(empty_db_dsn: str,
                                                          tmp_path: Path) -> None:
    connection = psycopg2.connect(empty_db_dsn)
    with connection, connection.cursor() as cursor:  # the real app's tables, not ours
        cursor.execute(sqlfiles.read_sql(sqlfiles.DEMO_SCHEMA_SCRIPT))
    connection.close()
    daemon = Twistd(tmp_path, FOREGROUND, ["--port", "tcp:{port}:interface=127.0.0.1",
                                           "--admin-port", "tcp:0:interface=127.0.0.1",
                                           "--dsn", empty_db_dsn], env=env_without_dsn())
    daemon.start(wait=False)
    try:
        assert daemon.wait_listening()
        status, body = wait_for(
            lambda: (h := daemon.health()) and "partysense-db install" in h[1]["reason"] and h,
            30, "/healthz to name the missing install step")
        assert status == 503 and body["status"] != "ok"
        wait_for(lambda: "partysense-db install" in daemon.log(), 10, "the reason in the log")
        installed = partysense_db("install", "--dsn", empty_db_dsn)
        assert installed.returncode == 0, installed.stderr
        daemon.wait_healthy(30)
    finally:
        daemon.stop()


@pytest.mark.logic
@pytest.mark.parametrize(("arguments", "demo"), [
    (["--dsn", "dbname=x", "--demo"], True),
    (["--dsn", "dbname=x"], False),
    ([], True),
    (["--no-demo"], False),
])
def test_demo_is_a_yes_or_no(arguments: list[str], demo: bool) -> None:
    """The start line says "demo: True", never "demo: 1" (a twistd flag counts)."""
    options = Options()
    options.parseOptions(arguments)
    assert options["run-demo"] is demo


@pytest.mark.logic
@pytest.mark.parametrize(("port", "description"), [
    ("18854", "tcp:18854:backlog=1024"),
    ("tcp:18854:interface=127.0.0.1", "tcp:18854:interface=127.0.0.1:backlog=1024"),
    ("ssl:443:privateKey=k.pem:certKey=c.pem", "ssl:443:privateKey=k.pem:certKey=c.pem"
                                               ":backlog=1024"),
    ("tcp:18854:backlog=50", "tcp:18854:backlog=50"),
    ("unix:/run/partysense.sock", "unix:/run/partysense.sock"),
])
def test_tcp_and_tls_ports_get_a_deep_accept_queue(port: str, description: str) -> None:
    """The systemd unit's tcp:18854:interface=127.0.0.1 listened with Twisted's 50."""
    assert endpoint_description(port) == description



@pytest.mark.logic
@pytest.mark.parametrize(("milliseconds", "seconds"), [("0", 0.0), ("5", 0.005), ("20", 0.02)])
def test_write_delay_is_given_in_milliseconds(milliseconds: str, seconds: float) -> None:
    from partysense.tap import limits_from

    options = Options()
    options.parseOptions(["--dsn", "dbname=x", "--write-delay", milliseconds])
    assert limits_from(options).write_delay == pytest.approx(seconds)


@pytest.mark.logic
@pytest.mark.parametrize("milliseconds", ["-1", "5000", "soon"])
def test_write_delay_out_of_range_is_a_usage_error(milliseconds: str) -> None:
    with pytest.raises(usage.UsageError, match="write-delay"):
        Options().parseOptions(["--dsn", "dbname=x", "--write-delay", milliseconds])


@pytest.mark.logic
def test_redact_hides_every_password_like_key() -> None:
    from partysense.db.dsn import redact

    shown = redact(f"host=db user=u password={SECRET} sslpassword={SECRET} sslmode=require")
    assert SECRET not in shown
    assert "password=***" in shown and "sslpassword=***" in shown and "sslmode=require" in shown
