"""What one ``--workers`` child process runs (see partysense/process/workers.py).

    python -m partysense.process.workerproc PARENT_PID -- TWISTD_ARGUMENTS

The parent passes the listening socket as fd 3. Twisted's ``systemd:``
endpoint adopts such a socket, but only believes LISTEN_FDS when LISTEN_PID
is the process's own pid and LISTEN_FDNAMES names each descriptor, and reads
them when twisted.internet.endpoints is first imported: so they are set
here, before anything imports Twisted.
"""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux; best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before we asked
        raise SystemExit("the parent partysense-live is gone")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] != "--" or not argv[0].isdigit():
        raise SystemExit("usage: python -m partysense.process.workerproc PARENT_PID -- TWISTD_ARGS")
    die_with_parent(int(argv[0]))
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_FDNAMES"] = "partysense"  # Twisted wants one name per descriptor
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *argv[2:]]
    run()


if __name__ == "__main__":
    main(sys.argv[1:])
