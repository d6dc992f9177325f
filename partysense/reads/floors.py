"""A seed subscription's floor: the log's end, read at most a moment before it starts.

Behind a load balancer a seed client that lost its daemon reconnects to
another one, which may not yet have read a change the first one already
sent it. Its subscription therefore starts past a floor: changes at or below
it are not sent (partysense/dialects/seed.py). The floor is asked for once the
request has been checked (the database is there, the event exists), just
before the subscription starts. Which read of the log's end may serve:

- a read that started *before* the asking: the subscription gets everything
  committed after that read started, and may repeat only what committed in
  between. A client can have had such a change from another daemon only if
  it received it, lost that daemon and came back here, all after the read
  started: a client that waits at least ``AGE`` before reconnecting never
  gets a change twice (real clients wait longer: the page 250 ms at least);
- with none that recent, a read that starts now: the subscription gets what
  commits after now, as the old service's subscription got what committed
  after its per-client LISTEN ran.

Either way the subscription starts at a moment between the request's
arrival and its start, as every seed subscription always has (a request held
while the daemon connects, --grace, starts when it is served). However many
seed clients subscribe, the log's end costs at most one query per ``AGE``
(plus those that run long), not one per client or per batch of clients.
"""
from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from partysense.core.singleflight import SingleFlight

# Seconds a read of the log's end may have started before the request it serves.
AGE = 0.05


class RecentLogEnd:
    """The log's newest seq, from a read started at most ``age`` before each asker asked.

    A read serves an asker, running or answered, only if it started at most
    ``age`` before the asking; a later asker waits for the next read, which
    starts when the running one ends (core/singleflight.py, ``started_within``).
    """

    def __init__(self, read: Callable[[], defer.Deferred[int]], clock: IReactorTime,
                 age: float = AGE) -> None:
        self._read = read
        self._flights: SingleFlight[None, int] = SingleFlight(clock, started_within=age)

    @property
    def reads(self) -> int:
        return self._flights.calls

    def ask(self) -> defer.Deferred[int]:
        return self._flights.ask(None, self._read)
