"""The README's two commands, as a new user meets them.

The run command is run for real in a fresh clone: it makes a virtualenv,
installs the project, starts twistd with the embedded PostgreSQL and the demo
party; a WebSocket client must then see a vote, and SIGTERM must stop both
twistd and the PostgreSQL it started. Only the port number is changed (to 0:
twistd binds a free port and logs which), so that a daemon someone is running
on 18854 does not get in the way.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
from websockets.sync.client import connect

from harness.daemon import reported_port, wait_for
from partysense.db.embedded import default_data_dir

CHECKOUT = Path(__file__).resolve().parent.parent
README = CHECKOUT / "README.md"
DEMO_PORT = "18854"


def readme_command(marker: str) -> str:
    """The command in the ```sh block right under ``<!-- marker -->``.

    Read the way .ci/run reads it: the line two below the marker.
    """
    lines = README.read_text("utf-8").splitlines()
    index = lines.index(f"<!-- {marker} -->")
    assert lines[index + 1].strip() == "```sh", f"no ```sh block under <!-- {marker} -->"
    assert lines[index + 3].strip() == "```", f"the {marker} block is not one line"
    return lines[index + 2].strip()


def twistd_part(command: str) -> list[str]:
    """The words of the command's last step (the one that runs twistd)."""
    return shlex.split(command.split("&&")[-1])


@pytest.mark.logic
def test_both_commands_are_there_and_well_formed() -> None:
    run_command, test_command = readme_command("run-command"), readme_command("test-command")
    words = twistd_part(run_command)
    assert words[0].endswith("twistd")
    assert words[1:] == ["-n", "partysense-live", "--port", DEMO_PORT]
    assert "--dsn" not in run_command and "PARTYSENSE_DSN" not in run_command
    assert "pip install ." in run_command  # what production does: a real install
    assert "pytest" in test_command
    assert "editable_mode=compat" in test_command  # plain -e hides the dropin
    assert "[test]" in test_command


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the PostgreSQL running in ``data_dir``, if any."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n")[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def new_user_environment() -> dict[str, str]:
    """This environment, minus the test virtualenv a new user would not have."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PARTYSENSE_DSN", "PARTYSENSE_TEST_DSN")}
    venv = os.environ.get("VIRTUAL_ENV")
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if not venv or not p.startswith(venv))
    return env


class ReadmeRun:
    def __init__(self, clone: Path, command: str) -> None:
        self.clone = clone
        self.command = command
        self.port = 0  # until twistd says which port it bound ("Site starting on PORT")
        self.output = clone.parent / "run-command.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.output.open("wb") as output:
            self.process = subprocess.Popen(
                ["bash", "-c", self.command], cwd=self.clone, env=new_user_environment(),
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)

    def text(self) -> str:
        return self.output.read_text("utf-8", "replace")[-5000:]

    def health(self) -> int | None:
        import urllib.error
        import urllib.request

        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the run command exited ({self.process.returncode}):\n"
                                 f"{self.text()}")
        if not self.port:
            self.port = reported_port(self.output.read_text("utf-8", "replace")) or 0
            if not self.port:
                return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def twistd_pid(self) -> int:
        return int((self.clone / "twistd.pid").read_text().strip())

    def kill_everything(self, data_dir: Path) -> None:
        """After a failure: leave no twistd and no PostgreSQL behind."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        pid = postmaster_pid(data_dir)
        if pid is not None:
            os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            wait_for(lambda: not alive(pid), 30, "the embedded PostgreSQL to stop")


@pytest.mark.daemon
@pytest.mark.slow
@pytest.mark.embedded_only
def test_run_command_in_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(CHECKOUT), str(clone)], check=True,
                   timeout=120)
    command = readme_command("run-command")
    command = re.sub(rf"--port {DEMO_PORT}\b", "--port 0", command)
    assert "--port 0" in command
    data_dir = default_data_dir()
    if postmaster_pid(data_dir) is not None:
        # Someone's demo is running there (the daemon would adopt it, and
        # stopping it is not ours to do): the same command, its own data.
        data_dir = tmp_path / "pgdata"
        command += f" --data-dir {data_dir}"
    run = ReadmeRun(clone, command)
    run.start()
    try:
        wait_for(lambda: run.health() == 200, 90, "the new user's daemon to be healthy")
        with connect(f"ws://127.0.0.1:{run.port}/", open_timeout=10) as client:
            client.send(json.dumps({"event": "ALL"}))
            vote = json.loads(client.recv(timeout=30))  # the demo party votes
        assert {"eid", "event", "track", "artist", "tid", "up", "op", "seq"} <= set(vote)
        server = postmaster_pid(data_dir)
        assert server is not None, f"no embedded PostgreSQL in {data_dir}"

        os.kill(run.twistd_pid(), signal.SIGTERM)
        assert run.process is not None
        run.process.wait(30)
        wait_for(lambda: not alive(server), 30, "the embedded PostgreSQL to stop")
        assert not (data_dir / "postmaster.pid").exists()
        assert not (clone / "twistd.pid").exists()
        assert "Traceback" not in run.text()
    finally:
        run.kill_everything(data_dir)
