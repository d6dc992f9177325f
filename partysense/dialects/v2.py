"""The ``partysense.v2`` dialect: exact tallies, several subscriptions, resume.

    -> {"type": "subscribe", "event": 1, "id": "a"}
    <- {"type": "snapshot", "event": 1, "id": "a", "cursor": 1234, "title": "...",
        "tracks": [{"tid": 7, "track": "...", "artist": "...", "up": 3, "down": 1}]}
    <- {"type": "change", "sub": 1, "eid": 1, ..., "seq": 1240, ...}
    -> {"type": "subscribe", "event": 1, "cursor": 1240}        resume after a reconnect
    <- {"type": "subscribed", "event": 1, "cursor": 1240}, then every change after 1240
    -> {"type": "unsubscribe", "event": 1}   <- {"type": "unsubscribed", "event": 1}
    -> {"type": "ping"}                      <- {"type": "pong"}
    -> {"type": "auth", "token": "<jwt>"}    <- {"type": "authorized", "expires": 1767225600}
    <- {"type": "token_expired"}             send a fresh "auth" within 30 s, or
    <- {"type": "unsubscribed", "event": 1, "reason": "token_expired"}

Errors are messages ({"type": "error", "error": kind, "message": ...}); the
connection stays open. The full description is docs/protocol.md; the bytes of
a change and a presence message are made in partysense/dialects/v2frames.py.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from partysense.core import budgets, errors
from partysense.core.change import Change
from partysense.core.channels import channel_for
from partysense.core.errors import ClientError, is_utf8
from partysense.db.changelog import Replay, Snapshot
from partysense.db.errors import NotConnected, Overloaded, QueryRefused
from partysense.dialects.access import Access
from partysense.dialects.dialect import Client, Shared
from partysense.dialects.subscription import parse_event_id, parse_json
from partysense.dialects.tokens import Grant, TokenError
from partysense.dialects.v2subscription import Subscription

SUBPROTOCOL = "partysense.v2"
MAX_ID_LENGTH = 64
# Each subscribe costs a snapshot or a replay, subscribing again to the same
# event too: a burst of --max-subscriptions and a few more (a page opening its
# events at once, and moving a few), then this many a second.
SUBSCRIBES_PER_SECOND = 1.0
SUBSCRIBE_SPARE = 8
# A client told "too_many_subscribes" this many times in a row that keeps on
# is closed (4029): answering its loop would cost everybody else's CPU.
MAX_REFUSED_SUBSCRIBES = 4


class BadRequest(Exception):
    """A v2 request we answer with an error message (the connection stays open)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class V2Session:
    """A v2 client's subscriptions and requests."""

    dialect = "v2"
    _log = Logger()

    def __init__(self, client: Client, shared: Shared) -> None:
        self.client = client
        self._shared = shared
        self._subs: dict[str, Subscription] = {}
        self._closed = False
        self._budget = float(shared.max_subscriptions + SUBSCRIBE_SPARE)
        self._budget_at = shared.clock.seconds()
        self._refused_in_a_row = 0
        self._access = Access(shared.tokens, shared.clock, client.url_token,
                              expired=self._token_expired, lapsed=self._token_lapsed)

    @property
    def subscriptions(self) -> int:
        return len(self._subs)

    def received(self, text: str) -> Any:
        message = parse_json(text)  # not JSON at all: that one still closes (1007)
        request_id: Any = None
        try:
            if not isinstance(message, dict):
                raise BadRequest("bad_request", 'a request is a JSON object with a "type"')
            request_id = _request_id(message.get("id"))
            kind = message.get("type")
            handler = {
                "subscribe": self._subscribe,
                "unsubscribe": self._unsubscribe,
                "ping": self._ping,
                "auth": self._auth,
            }.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise BadRequest("bad_request",
                                 'unknown "type": use subscribe, unsubscribe, ping or auth')
            d = defer.maybeDeferred(handler, request_id, message)
        except BadRequest as error:
            d = defer.fail(error)
        return d.addErrback(self._answer_error, request_id)

    def _answer_error(self, failure: Any, request_id: Any) -> None:
        failure.trap(BadRequest)
        if self._closed:
            return  # the client left while we worked on its request
        error = failure.value
        self._shared.counters.bad_input(error.kind)
        self.client.log_refused(error.kind, error.message)
        self.send({"type": "error", "id": request_id, "error": error.kind,
                   "message": error.message})

    def send(self, body: dict[str, Any]) -> None:
        if body.get("id") is None:
            body.pop("id", None)
        self.client.send_json(body)

    # -- requests -------------------------------------------------------------

    def _ping(self, request_id: Any, message: dict) -> None:
        self.send({"type": "pong", "id": request_id})

    def _auth(self, request_id: Any, message: dict) -> None:
        grant = self._grant(message.get("token"), required=True)
        for channel, subscription in list(self._subs.items()):
            if not grant.allows(subscription.event_id):
                self._end(channel, "forbidden")
        expires = None if grant.expires == math.inf else int(grant.expires)
        self.send({"type": "authorized", "expires": expires, "id": request_id})

    def _grant(self, token: Any, required: bool = False) -> Grant:
        if required and token is None:
            raise BadRequest("bad_request", '"auth" needs a "token"')
        try:
            return self._access.grant(token)
        except TokenError as error:
            raise BadRequest(error.kind, error.reason) from None

    def _token_expired(self) -> None:
        self.send({"type": "token_expired"})

    def _token_lapsed(self) -> None:
        for channel in list(self._subs):
            self._end(channel, "token_expired")

    def _end(self, channel: str, reason: str) -> None:
        subscription = self._subs.get(channel)
        if subscription is not None:
            self._drop(channel)
            self.send({"type": "unsubscribed", "event": _event_name(subscription.event_id),
                       "reason": reason})

    def _unsubscribe(self, request_id: Any, message: dict) -> None:
        event_id = _event(message)
        self._drop(channel_for(event_id))
        self.send({"type": "unsubscribed", "event": _event_name(event_id), "id": request_id})

    @defer.inlineCallbacks
    def _subscribe(self, request_id: Any, message: dict) -> Any:
        event_id = _event(message)
        since = message.get("cursor")
        wants_presence = message.get("presence", False)
        if type(wants_presence) is not bool:
            raise BadRequest("bad_request", '"presence" must be true or false')
        if since is not None and (type(since) is not int or since < 0):
            raise BadRequest("bad_request", '"cursor" must be a non-negative integer')
        channel = channel_for(event_id)
        try:
            self._grant(message.get("token")).check(event_id)
        except TokenError as error:
            raise BadRequest(error.kind, error.reason) from None
        self._spend_subscribe()
        self._drop(channel)  # subscribing again restarts the subscription
        if len(self._subs) >= self._shared.max_subscriptions:
            raise BadRequest("too_many_subscriptions",
                             f"at most {self._shared.max_subscriptions} subscriptions "
                             "per connection")
        reserved = 0 if since is None else self._reserve_replay(since)
        replayed = 0
        try:
            replayed = (yield self._subscribe_to(request_id, event_id, channel, since,
                                                 wants_presence)) or 0
        finally:
            if reserved:  # what the replay did not send goes back to the address
                budgets.replayed(self._shared.budgets, self._address, self._now(), reserved,
                                 replayed)

    @defer.inlineCallbacks
    def _subscribe_to(self, request_id: Any, event_id: int | None, channel: str,
                      since: int | None, wants_presence: bool = False) -> Any:
        """Subscribed, its snapshot or replay sent; returns the rows replayed."""
        try:
            if event_id is not None and not (
                    yield self._shared.event_exists(self._address, event_id)):
                raise BadRequest("unknown_event", f"event {event_id} does not exist")
            if self._closed:
                return  # gone while we asked: subscribed now, it would never be dropped
            subscription = Subscription(self.client, channel, event_id, self.start_over)
            subscription.wants_presence = wants_presence
            subscription.request_id = request_id
            self._subs[channel] = subscription
            self._shared.hub.subscribe(channel, subscription)
            yield self._shared.listener.whenListening(channel)
            reads = self._shared.reads
            if since is None:
                snapshot, since_then = yield reads.snapshot(event_id)
                self._started(subscription, request_id, snapshot, reset=False,
                              replayed=since_then)
            else:
                replay: Replay = yield reads.replay(event_id, since)
                if replay.snapshot is not None:
                    self._started(subscription, request_id, replay.snapshot, reset=True)
                elif self._subs.get(channel) is subscription:
                    self.send({"type": "subscribed", "event": _event_name(event_id),
                               "cursor": since, "id": request_id})
                    subscription.answered = True
                    self._tell_presence(subscription)
                    yield subscription.start(since, replay.changes)
                return len(replay.changes) or 1
        except Overloaded:
            self._drop(channel)
            raise BadRequest("unavailable", "the server is busy; retry soon") from None
        except NotConnected as error:
            self._drop(channel)
            raise BadRequest("unavailable",
                             f"the database is unreachable right now ({error}); retry soon"
                             ) from None
        except QueryRefused as error:
            # Reachable but refusing (privileges, a missing install step):
            # the sysadmin's problem, said plainly in the log.
            self._drop(channel)
            self._log.error("The database refused a v2 subscription query: {error}",
                            error=str(error))
            raise BadRequest("server_error", "the server could not read the event's "
                                             "history; see its log") from None
        except BadRequest:
            self._drop(channel)
            raise

    @property
    def _address(self) -> str:
        return self.client.address or "?"

    def _now(self) -> float:
        return self._shared.clock.seconds()

    def _reserve_replay(self, since: int) -> int:
        """The replay's most rows, taken from the address's budget (or refused)."""
        rows = self._shared.replay_rows(since)
        refusal = budgets.replay_refusal(self._shared.budgets, self._address, self._now(), rows)
        if refusal is not None:
            self._refused()
            raise BadRequest("too_many_subscribes", refusal)
        return rows

    def _refused(self) -> None:
        """One more refused subscribe; a client that keeps on past them is closed."""
        self._refused_in_a_row += 1
        if self._refused_in_a_row > MAX_REFUSED_SUBSCRIBES:
            raise ClientError("flood", errors.FLOOD,
                              "kept subscribing past its budget of subscribes")

    def _spend_subscribe(self) -> None:
        now = self._shared.clock.seconds()
        burst = float(self._shared.max_subscriptions + SUBSCRIBE_SPARE)
        self._budget = min(burst, self._budget + (now - self._budget_at) * SUBSCRIBES_PER_SECOND)
        self._budget_at = now
        if self._budget < 1:
            self._refused()
            raise BadRequest("too_many_subscribes",
                             f"more than {burst:g} subscribes at once, then "
                             f"{SUBSCRIBES_PER_SECOND:g} a second; retry in a moment")
        # The address's budget too: a new connection does not start afresh.
        refusal = budgets.subscribe_refusal(self._shared.budgets, self._address, now)
        if refusal is not None:
            self._refused()
            raise BadRequest("too_many_subscribes", refusal)
        self._refused_in_a_row = 0
        self._budget -= 1

    def _started(self, subscription: Subscription, request_id: Any, snapshot: Snapshot,
                 reset: bool, replayed: list[Change] | None = None) -> None:
        if self._subs.get(subscription.channel) is not subscription:
            return  # unsubscribed (or closed) while the snapshot was taken
        self.send(snapshot.message(subscription.event_id, request_id, reset=reset))
        subscription.answered = True
        self._tell_presence(subscription)
        subscription.start(snapshot.cursor, replayed or [])

    def start_over(self, old: Subscription) -> None:
        """``old`` again from a fresh snapshot with "reset": true (docs/protocol.md):
        the log it was following started over. Sent unasked, or as the answer to
        its subscribe if that was not out yet (read before the reset, perhaps)."""
        if self._closed or self._subs.get(old.channel) is not old:
            return
        new = Subscription(self.client, old.channel, old.event_id, self.start_over)
        new.wants_presence = old.wants_presence
        new.request_id = old.request_id
        answer_to = None if old.answered else old.request_id
        self._subs[old.channel] = new
        # The new one first: the channel never has no subscriber, so it stays LISTENed.
        self._shared.hub.subscribe(old.channel, new)
        old.stop()
        self._shared.hub.unsubscribe(old.channel, old)
        self._shared.reads.snapshot(old.event_id).addCallbacks(
            lambda taken: self._started(new, answer_to, taken[0], reset=True,
                                        replayed=taken[1]),
            self._start_over_failed, errbackArgs=(new,))

    def _start_over_failed(self, failure: Any, subscription: Subscription) -> None:
        if self._closed or self._subs.get(subscription.channel) is not subscription:
            return
        # No snapshot now (the database is unreachable?): the client reconnects
        # and resumes from its cursor, which the log's checks answer with one.
        self._log.warn("A fresh snapshot after the log started over failed: {why}",
                       why=failure.getErrorMessage())
        self.client.close_with(errors.TRY_AGAIN_LATER,
                               "the change log started over; resubscribe")

    def _tell_presence(self, subscription: Subscription) -> None:
        """The event's count right after its snapshot; then each change of it."""
        presence = self._shared.presence
        if presence is None or subscription.event_id is None or not subscription.wants_presence:
            return  # off, the firehose (no count), or not asked for
        self.client.send_frame(Subscription.encode_notice(presence.current(subscription.event_id)))

    def _drop(self, channel: str) -> None:
        subscription = self._subs.pop(channel, None)
        if subscription is not None:
            subscription.stop()
            self._shared.hub.unsubscribe(channel, subscription)

    def close(self) -> None:
        self._closed = True
        self._access.close()
        for channel in list(self._subs):
            self._drop(channel)


def _event(message: dict) -> int | None:
    try:
        return parse_event_id(message.get("event"))
    except ClientError as error:
        raise BadRequest(error.kind, error.reason) from None


def _event_name(event_id: int | None) -> int | str:
    return "ALL" if event_id is None else event_id


def _request_id(value: Any) -> Any:
    if value is None or (type(value) is int) or (isinstance(value, str)
                                                and len(value) <= MAX_ID_LENGTH
                                                and is_utf8(value)):
        return value
    raise BadRequest("bad_request", f'"id" must be a number or a string of at most '
                                    f"{MAX_ID_LENGTH} characters")
