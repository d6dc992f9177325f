"""One v2 subscription: an event (or the firehose) on one connection.

The hub's subscriber for a v2 connection (partysense/core/hub.py): it holds
live changes until its snapshot or replay is out, through the catch-up gate
(partysense/dialects/catchup.py), and frames each change once for every v2
subscriber (partysense/dialects/v2frames.py). Its session
(partysense/dialects/v2.py) makes it, starts it and drops it; it knows its
session only as the client it writes to and what to call when the log starts
over, so this module does not import the session's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from partysense.adapters.autobahn_adapter import Frame
from partysense.core.change import Change
from partysense.core.hub import Delivery
from partysense.core.notice import Notice
from partysense.dialects.catchup import CatchUp, past
from partysense.dialects.dialect import Client
from partysense.dialects.v2frames import change_frame, notice_frame, v2_frame


class Subscription:
    """One event (or the firehose) on one v2 connection, a hub subscriber.

    Until its snapshot or replay has been sent, live changes wait; afterwards
    a change is sent only if its seq is past the cursor, which is what makes
    snapshot + changes exact (partysense/dialects/catchup.py).
    """

    wire_format = "v2"

    def __init__(self, client: Client, channel: str, event_id: int | None,
                 start_over: Callable[[Subscription], None]) -> None:
        """``start_over``: the session's, called with this subscription when the
        log it follows started over (V2Session.start_over)."""
        self._client = client
        self._start_over = start_over
        self.channel = channel
        self.event_id = event_id
        self._gate = CatchUp(client.send_frame, client.too_slow)
        # The hub calls the gate itself: no call in between on the hot path.
        self.deliver: Callable[[Delivery, Frame], None] = self._gate.deliver
        # Presence is asked for ("presence": true): clients written before it
        # read every message after a snapshot as a change.
        self.wants_presence = False
        self.request_id: Any = None  # the id of the subscribe that made it
        # That subscribe's snapshot (or "subscribed") is out: presence may follow.
        self.answered = False

    def stop(self) -> None:
        """Unsubscribed, subscribed again or closed: nothing more is sent for it.

        Its snapshot may still wait in the send queue; without this, the
        changes held for it would follow once the snapshot is out, after an
        "unsubscribed" or a newer snapshot.
        """
        self._gate.stop()

    @staticmethod
    def encode(delivery: Delivery) -> Frame:
        """The frame of a change, made once for every subscriber (partysense/core/hub.py)."""
        return v2_frame(delivery)

    @staticmethod
    def encode_notice(notice: Notice) -> Frame:
        """A presence message's frame, made once for every v2 subscriber."""
        return notice_frame(notice)

    def notice(self, frame: Frame) -> None:
        # Before its snapshot it is dropped: the count follows the snapshot,
        # fresher than this one (V2Session._tell_presence).
        if self._gate.active and self.answered and self.wants_presence:
            self._client.send_frame(frame)

    def start_over(self) -> None:
        """The log started over (partysense/core/hub.py): a fresh snapshot."""
        self._start_over(self)

    def start(self, cursor: int, replayed: list[Change]) -> defer.Deferred[None]:
        """Send the replayed changes after ``cursor`` at the client's pace, then go live."""
        replayed, last = past(cursor, replayed)
        frames = (change_frame(self.channel, change) for change in replayed)
        return self._client.stream(frames).addCallback(
            lambda _: self._gate.caught_up(last))
