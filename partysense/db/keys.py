"""The keys the trigger signs notifications with, as the listener last read them.

Read on the listener's own connection when it connects, then every
``REFRESH`` seconds: `partysense-db key rotate` adds a key that signs only a
minute later (sql/install.sql), so every daemon knows it before the first
notification signed with it. A database without the table (installed by an
older release), or a role not granted ``SELECT`` on it, leaves the listener
in the doorbell mode: every notification makes it read the log
(partysense/db/doorbell.py), as before signatures, and it says why once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from partysense.db.errors import QueryRefused

KEYS_QUERY = "SELECT id, secret FROM partysense_key"
# Seconds between reads of the keys; a rotated key signs 30 s after it is
# made at the earliest (partysense_rotate_key).
REFRESH = 15.0


class SigningKeys:
    """Key id -> secret, or None when they cannot be read (the doorbell mode)."""

    log = Logger()

    def __init__(self) -> None:
        self.keys: dict[int, bytes] | None = None
        self._refused: str | None = None  # why not, as last said in the log

    @property
    def signed(self) -> bool:
        """Notifications are believed when they check out with a key."""
        return bool(self.keys)

    @defer.inlineCallbacks
    def refresh(self, run_query: Callable[[str], defer.Deferred[list[tuple]]]) -> Any:
        """Read the keys again. NotConnected goes to the caller; a refusal is the
        doorbell mode."""
        try:
            rows = yield run_query(KEYS_QUERY)
        except QueryRefused as error:
            self._doorbell(str(error))
            return
        keys = {int(key_id): bytes(secret) for key_id, secret in rows}
        if not keys:
            self._doorbell("partysense_key is empty")
            return
        if self.keys is None:
            self.log.info("Notifications are signed: each is believed when its signature "
                          "checks out with one of {count} keys, without a read of the log.",
                          count=len(keys))
        self.keys, self._refused = keys, None

    def _doorbell(self, why: str) -> None:
        self.keys = None
        if why != self._refused:
            self._refused = why
            self.log.warn(
                "Cannot read the signing keys ({why}): every notification will make the "
                "listener read the change log. Run `partysense-db install` and grant the "
                "daemon's role SELECT on partysense_key (docs/operations.md).", why=why)
