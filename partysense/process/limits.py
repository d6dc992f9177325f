"""Process limits the daemon raises for itself at start.

Every WebSocket client is an open file. The usual soft limit (1024) would
turn client number ~1000 into an "accept failed: too many open files", while
the hard limit the administrator granted is often far higher; an
unprivileged process may raise its soft limit up to the hard one.
"""

from __future__ import annotations

import resource

from twisted.logger import Logger

log = Logger()


# Files the daemon needs besides its clients: the listening sockets, two
# database connections, logs, the embedded server's pipes, a margin.
RESERVED_FILES = 64

# Connections accepted and not yet upgraded (page and API requests, /healthz,
# handshakes on their way) held at once, at most: a venue's whole party
# reconnecting at once. A WebSocket handshake waits one round trip; a page's
# keep-alive connection at most --handshake-timeout.
MAX_WAITING = 20_000
# Under a lower open-files limit they get this share of the files left for
# connections (an eighth), and the clients the rest: waiting + clients +
# RESERVED_FILES never pass the limit, so accept() never meets EMFILE.
WAITING_SHARE = 8
MIN_WAITING = 16


def waiting_budget(open_files: int) -> int:
    """How many connections not yet upgraded may be open at once
    (partysense/wire/waiting.py): below the open-files limit, beside the clients."""
    if open_files == resource.RLIM_INFINITY:
        return MAX_WAITING
    files = max(0, open_files - RESERVED_FILES)
    return min(MAX_WAITING, max(MIN_WAITING, files // WAITING_SHARE))


def clients_that_fit(max_clients: int, open_files: int) -> int:
    """``max_clients``, lowered so that every client can have its socket,
    beside the connections still waiting to upgrade (:func:`waiting_budget`).

    Past the open-files limit a new client would get EMFILE from accept()
    (Twisted logs it and drops it) instead of a clean 1013 "server full".
    """
    if open_files == resource.RLIM_INFINITY:
        return max_clients
    fits = max(1, open_files - RESERVED_FILES - waiting_budget(open_files))
    if max_clients > fits:
        log.warn("--max-clients {wanted} is above what the open-files limit ({limit}) "
                 "allows: serving at most {fits} clients (raise LimitNOFILE / ulimit -n).",
                 wanted=max_clients, limit=open_files, fits=fits)
        return fits
    return max_clients


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    wanted = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses "infinity" for open files; its own ceiling is nr_open.
        wanted = _nr_open(default=soft)
    if wanted <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as error:
        log.warn("Could not raise the open-files limit from {soft} to {wanted}: {error}",
                 soft=soft, wanted=wanted, error=error)
        return soft
    log.info("Open-files limit raised from {soft} to {wanted}.", soft=soft, wanted=wanted)
    return wanted


def _nr_open(default: int) -> int:
    try:
        with open("/proc/sys/fs/nr_open") as source:
            return int(source.read())
    except (OSError, ValueError):
        return default
