"""``partysense-db tail``: one line per vote change, from the database or a daemon."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest

from harness.daemon import Daemon
from partysense.cli.tailformat import describe
from tests.support import Party, listen_mode_only

HOSTILE = 'Tab\tand\nnewline "quoted" <b>'


def partysense_db() -> list[str]:
    found = shutil.which("partysense-db", path=os.path.dirname(sys.executable))
    return [found] if found else [sys.executable, "-m", "partysense.cli.dbcli"]


class Tail:
    """A running ``partysense-db tail``, its stdout and stderr read line by line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        for stream, into in ((process.stdout, self.out), (process.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, into), daemon=True).start()

    @staticmethod
    def _pump(stream: object, into: queue.Queue[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.put(line.rstrip("\n"))

    def line(self, stream: str = "out", timeout: float = 10.0) -> str:
        try:
            return (self.out if stream == "out" else self.err).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line on std{stream} within {timeout} s") from None

    def wait_for_err(self, text: str, timeout: float = 10.0) -> str:
        while True:
            line = self.line("err", timeout)
            if text in line:
                return line


def ctrl_c_as_in_a_terminal() -> None:
    """SIGINT at its default in the tail, as a terminal's Ctrl-C finds it. A suite
    started as a background job of a non-interactive shell inherits SIGINT
    ignored (POSIX shells do that to background commands); Python and Twisted
    then leave it ignored, and the tail rightly went on after the test's Ctrl-C
    (three fresh-clone runs in a row failed so, its stack idle in the reactor)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def tail(*args: str) -> Iterator[Tail]:
    env = dict(os.environ)
    env.pop("PARTYSENSE_DSN", None)
    # A tail that will not end can be asked where it is: SIGABRT prints every
    # thread's stack to stderr (see ended()).
    env["PYTHONFAULTHANDLER"] = "1"
    process = subprocess.Popen(partysense_db() + ["tail", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                               env=env, preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        yield Tail(process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def ended(watching: Tail, timeout: float = 10.0) -> int:
    """The exit code; a tail still running after ``timeout`` fails the test with its
    threads' stacks (how the ignored SIGINT above was found)."""
    try:
        return watching.process.wait(timeout)
    except subprocess.TimeoutExpired:
        watching.process.send_signal(signal.SIGABRT)
        watching.process.wait(10)
        said = []
        while True:
            try:
                said.append(watching.err.get(timeout=1))
            except queue.Empty:
                break
        raise AssertionError(f"tail still running {timeout:g} s after Ctrl-C:\n"
                             + "\n".join(said)) from None


@pytest.mark.daemon
@listen_mode_only("tail --dsn hears NOTIFY; in WAL mode nothing is notified until a "
                  "daemon's relay logs the votes (docs/operations.md §13), and this test "
                  "runs no daemon")
def test_tail_from_the_database(party: Party, db_dsn: str) -> None:
    event_id, other = party.event('Friday "Fever"'), party.event("Other")
    track_id = party.track(HOSTILE, "Band")
    with tail("--event", str(event_id), "--dsn", db_dsn) as one, \
            tail("--event", "ALL", "--dsn", db_dsn) as everything:
        one.wait_for_err(f"listening on event_{event_id}")
        everything.wait_for_err("listening on firehose")
        vote_id = party.vote(event_id, track_id, up=False)
        party.vote(other, track_id)
        inserted, updated = one.line(), one.line()
        assert f"event {event_id} \"Friday \\\"Fever\\\"\" insert up " in inserted
        assert f"update up->down \"Tab\\tand\\nnewline \\\"quoted\\\" <b>\" by \"Band\" " \
               f"(track {track_id}, vote {vote_id})" in updated
        firehose = [everything.line() for _ in range(3)]  # an up-vote's update is a no-op
        assert [f" event {other} " in line for line in firehose] == [False, False, True]
    assert one.out.empty(), "a change of another event reached --event"


@pytest.mark.daemon
@listen_mode_only("tail --dsn hears NOTIFY (see test_tail_from_the_database)")
def test_tail_prints_raw_json(party: Party, db_dsn: str) -> None:
    event_id, track_id = party.event(), party.track()
    with tail("--event", str(event_id), "--dsn", db_dsn, "--json") as raw:
        raw.wait_for_err("listening on")
        party.vote(event_id, track_id)
        assert raw.line().startswith('{"eid" : ' + str(event_id) + ', ')


@pytest.mark.daemon
def test_tail_through_a_running_daemon(daemon: Daemon, party: Party) -> None:
    event_id = party.event("Live")
    track_id = party.track("Song", "Band")
    party.vote(event_id, track_id)
    with tail("--event", str(event_id), "--url", daemon.ws_url) as watching:
        header = watching.wait_for_err(f"watching event {event_id}")
        assert '"Live" has votes on 1 tracks' in header
        assert watching.line("err") == f'  track {track_id} "Song" by "Band": 1 up, 0 down'
        party.vote(event_id, track_id, up=False)
        assert " insert up \"Song\" by \"Band\"" in watching.line()
        assert " update up->down \"Song\"" in watching.line()


@pytest.mark.daemon
def test_tail_of_an_unknown_event_through_a_daemon_fails(daemon: Daemon) -> None:
    with tail("--event", "424242", "--url", daemon.ws_url) as watching:
        assert "unknown_event" in watching.wait_for_err("the daemon says")
        assert watching.process.wait(10) == 1


@pytest.mark.daemon
def test_tail_when_the_daemon_goes_away(daemon: Daemon) -> None:
    with tail("--event", "ALL", "--url", daemon.ws_url) as watching:
        watching.wait_for_err("watching event ALL")
        daemon.stop()
        assert "code 1001" in watching.wait_for_err("connection closed")
        assert watching.process.wait(10) == 1


@pytest.mark.daemon
@pytest.mark.parametrize(("args", "complaint"), [
    (["--event", "x1"], "not an event id or ALL"),
    (["--event", "0"], "not an event id or ALL"),
    (["--event", "1"], "no database"),
    (["--event", "1", "--dsn", "d", "--url", "ws://h/"], "not both"),
])
def test_tail_refuses_bad_arguments(args: list[str], complaint: str) -> None:
    env = dict(os.environ)
    env.pop("PARTYSENSE_DSN", None)
    done = subprocess.run(partysense_db() + ["tail", *args], capture_output=True, text=True,
                          env=env, timeout=30)
    assert done.returncode == 2 and complaint in done.stderr


@pytest.mark.logic
def test_a_line_per_kind_of_change() -> None:
    base = {"eid": 1, "event": "E", "track": None, "artist": "A", "tid": 7, "vote": 42,
            "seq": 9, "ts": datetime(2026, 1, 2, 3, 4, 5, 678000).timestamp()}
    assert describe({**base, "op": "delete", "up": False, "prev": False}) == (
        '03:04:05.678 seq 9 event 1 "E" delete down null by "A" (track 7, vote 42)')
    assert "insert up" in describe({**base, "op": "insert", "up": True, "prev": None})


@pytest.mark.daemon
def test_ctrl_c_ends_a_tail_quietly(daemon: Daemon, db_dsn: str) -> None:
    for args, ready in ((["--url", daemon.ws_url], "watching event ALL"),
                        (["--dsn", db_dsn], "listening on firehose")):
        with tail("--event", "ALL", *args) as watching:
            watching.wait_for_err(ready)
            watching.process.send_signal(signal.SIGINT)
            assert ended(watching) == 0
            left = []
            while True:
                try:
                    left.append(watching.err.get(timeout=1))
                except queue.Empty:
                    break
            assert not [line for line in left if "closed" in line or "Traceback" in line], left


@pytest.mark.daemon
@pytest.mark.parametrize("raw", [False, True])
def test_tail_escapes_what_a_forged_notification_would_print(
        party: Party, db_dsn: str, raw: bool) -> None:
    import psycopg2

    escape = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202e"  # title, clear screen, CSI, bidi override
    with tail("--event", "ALL", "--dsn", db_dsn, *(["--json"] if raw else [])) as watching:
        watching.wait_for_err("listening on firehose")
        connection = psycopg2.connect(db_dsn)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify('firehose', %s)", ("not json " + escape,))
        connection.close()
        line = watching.line()
    assert not any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F or char == "\u202e"
                   for char in line), repr(line)
    assert "\\u001b]0;owned\\u0007" in line


@pytest.mark.logic
def test_printable_escapes_control_and_format_characters_only() -> None:
    from partysense.cli.tailformat import printable

    assert printable("Café 🎉 \"x\" <b>") == "Café 🎉 \"x\" <b>"
    assert printable("a\x1bb\x9bc\u200ed\ne") == "a\\u001bb\\u009bc\\u200ed\\u000ae"
