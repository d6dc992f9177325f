"""Checking unsigned notifications against the change log (the doorbell mode).

When the daemon cannot read the signing keys (a database installed by an
older release, or a role without ``SELECT`` on ``partysense_key``), a
notification proves nothing: it only rings, and the listener reads the log
(partysense/db/listener.py). What it said is kept as a *claim*, a hash of
its bytes, and checked against the rows the reads bring: a genuine
notification is byte for byte a row (the same SQL function built both). A
claim that a read reaching the log's end does not confirm is a forgery, or
not one of our changes at all.
"""

from __future__ import annotations

from collections.abc import Iterator

from partysense.core.change import Change
from partysense.core.channels import carries

# What a notification said: its channel, a hash of its payload's bytes, its start.
Claim = tuple[str, int, str]

# Recently read changes, a hash of the payload -> its event: a notification
# often arrives after the read it rang for has already fetched its change, and
# must not be taken for forged unless it says something else.
RECENT = 20_000
# Claims waiting for the next read: a flood of NOTIFYs while a read is slow
# must not grow our memory; past this, claims are not checked (still read).
MAX_CLAIMS = 10_000


class Doorbell:
    """The claims of notifications not yet checked, and the changes recently read."""

    def __init__(self) -> None:
        self._claims: list[Claim] = []
        self._recent: dict[int, int] = {}  # insertion order: oldest first

    def claim(self, channel: str, payload: str) -> None:
        """A notification came on ``channel``: check it against the next read."""
        if len(self._claims) < MAX_CLAIMS:
            self._claims.append((channel, fingerprint(payload), payload[:200]))

    def take_claims(self) -> list[Claim]:
        """The claims made so far (the read about to start must confirm them)."""
        claims, self._claims = self._claims, []
        return claims

    def read(self, change: Change) -> None:
        """``change`` was read from the log."""
        if len(self._recent) >= RECENT:
            del self._recent[next(iter(self._recent))]  # the oldest
        self._recent[hash(change.payload)] = change.event_id

    def forgeries(self, claims: list[Claim], full: bool,
                  listening: set[str]) -> Iterator[tuple[str, str, str]]:
        """(channel, why, its start) of each claim the read disproves.

        PostgreSQL delivers a notification only once its transaction is
        visible, so a read that starts after it arrived, and reaches the
        log's end (a page that is not ``full``), has read the change. The
        claim must be that row's text exactly, on a channel of its event.
        """
        for claim in claims:
            channel, said, start = claim
            event_id = self._recent.get(said)
            if event_id is None and full:
                if len(self._claims) < MAX_CLAIMS:
                    self._claims.append(claim)  # the next page decides
            elif event_id is None:
                if channel in listening:
                    yield channel, ("not a change the log has, or it differs from the "
                                    "log's (or a name changed since)"), start
            elif not carries(channel, event_id):
                yield channel, f"a change of event {event_id} on {channel}", start

    def forget(self) -> None:
        """The connection is gone: its claims will never be checked."""
        self._claims = []

    def clear_recent(self) -> None:
        """The log went back (a restore): what was read before says nothing now."""
        self._recent.clear()


def fingerprint(payload: str) -> int:
    """A hash of a notification's bytes, to compare with a row's (``Change.payload``)."""
    return hash(payload.encode("utf-8", "surrogatepass"))
