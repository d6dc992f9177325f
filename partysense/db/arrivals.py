"""What the listener makes of each notification: a change it believes, one it
holds for a moment, or a forgery it counts.

Any role that can connect may NOTIFY on any channel (PostgreSQL has no
permission for it), so a notification is believed only when it is signed
with one of the keys (partysense/core/signature.py, partysense/db/keys.py)
and names a change of its channel's event. It is then parsed (the only parse
of that change) and handed on, with no read of the change log; or, while a
statement of the listener's work loop runs (a LISTEN, a read of the log),
held in arrival order and handed on once the statement is done, so that
nothing goes out before what the statement brings. A notification that does
not check out is counted and logged at a bounded rate, and costs nothing
more (docs/security.md).

Without the keys (an older install, or no grant) every notification is a
doorbell: its claim is noted (partysense/db/doorbell.py) and the listener
reads the log.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from partysense.core.change import BadChange, Change, parse_change
from partysense.core.channels import carries
from partysense.core.quietlog import Quiet
from partysense.core.signature import checked, payload_of
from partysense.db.doorbell import Doorbell
from partysense.db.keys import SigningKeys

# Signed changes waiting for a statement of the work loop to finish: past
# this many, they are dropped and the log read instead.
MAX_HELD = 10_000


class Arrivals:
    """Notifications in, changes out: ``hand_on(change)`` for each believed one,
    in arrival order (which is commit order); ``ring()`` when the log must be
    read (a doorbell without keys, or held changes dropped).

    ``holding()`` says whether a statement of the work loop is running;
    ``last_seq()`` the newest change handed on (an older one came first on
    the change's other channel, and is not repeated).
    """

    def __init__(self, keys: SigningKeys, doorbell: Doorbell, log: Logger,
                 reactor: IReactorTime, *, hand_on: Callable[[Change], None],
                 ring: Callable[[], None], holding: Callable[[], bool],
                 last_seq: Callable[[], int | None]) -> None:
        self._keys = keys
        self._doorbell = doorbell
        self._hand_on = hand_on
        self._ring = ring
        self._holding = holding
        self._last_seq = last_seq
        self._log = log
        self._quiet = Quiet(log, reactor)
        self._held: list[Change] = []
        self._dropping = False  # _held overflowed: drop until the next read starts
        # The last notification believed: the same change comes next on its other channel.
        self._last_text = ""
        self._last_change: Change | None = None
        self.bad = 0  # notifications that were not a change of ours

    def arrive(self, channel: str, text: str) -> None:
        """One notification on ``channel`` (LISTENed), as it came."""
        if self._keys.signed:
            self._believe(channel, text)
            return
        # Signed or not, what it claims is the payload (checked against the log).
        self._doorbell.claim(channel, payload_of(text))
        # Unsigned, any notification rings, whatever it says: reading the log
        # costs one query and can only ever find real changes.
        self._ring()

    def _believe(self, channel: str, text: str) -> None:
        """A signed change, handed on now, or held while a statement runs."""
        change = self._last_change
        if text != self._last_text or change is None:
            payload, why = checked(text, self._keys.keys or {})
            if payload is None:
                self.forged(channel, why, text)
                return
            try:
                change = parse_change(payload)
            except BadChange as error:
                self.forged(channel, str(error), text)
                return
            self._last_text, self._last_change = text, change
        if not carries(channel, change.event_id):
            self.forged(channel, f"a change of event {change.event_id} on {channel}", text)
        elif self._holding():
            self._hold(change)
        elif change.seq > (self._last_seq() or 0):
            self._hand_on(change)
        # else: handed on already (it came on its event's channel first)

    def _hold(self, change: Change) -> None:
        if self._dropping:
            return
        if len(self._held) < MAX_HELD:
            self._held.append(change)
            return
        # Too many to hold: drop them all, and read the log (from the last one
        # handed on) once the statement running is done.
        self._log.warn("{count} notifications came during one statement: reading them "
                       "from the change log instead.", count=len(self._held))
        self._held, self._dropping = [], True
        self._ring()

    def reading(self) -> None:
        """A read of the log begins: what is dropped from now on is held again."""
        self._dropping = False

    def release(self) -> None:
        """Hand on what was held while a statement ran (what it read is not repeated)."""
        held, self._held = self._held, []
        for change in held:
            if change.seq > (self._last_seq() or 0):
                self._hand_on(change)

    def forget(self) -> None:
        """The connection is gone: what it brought and was not handed on yet,
        the next connection's catch-up reads from the log."""
        self._held = []
        self._dropping = False
        self._last_text, self._last_change = "", None

    def forged(self, channel: str, why: str, payload: str) -> None:
        """Count and log (at a bounded rate) a notification that is not a change of ours."""
        self.bad += 1
        self._quiet.warn(
            channel, "Ignored a notification on {channel} that is not a vote change of ours "
            "({why}): {payload!r}", channel=channel, why=why, payload=payload[:200])
