// partysense-live's client: live, exact tallies of an event, in one ES module.
//
//   import {connect} from "https://live.example/client.js";
//   const live = connect({event: 3, token, onSnapshot, onChange, onStatus});
//   ...
//   live.close();
//
// No build step, no dependency. It speaks the partysense.v2 WebSocket dialect
// (docs/protocol.md): a snapshot of the event's tallies, then one message per
// vote change, applied with the rules of that page (insert adds one, update
// moves one, delete removes one), so the tallies stay exactly what the
// database says. After any disconnect it reconnects with capped exponential
// backoff and jitter and resumes from the highest seq it applied: the daemon
// replays exactly what was missed. docs/client.md is the manual.
//
// Nothing here touches the DOM: names from the database reach your code as
// data; set them with textContent, never as markup.

export const SUBPROTOCOL = "partysense.v2";

const BACKOFF_FIRST_MS = 500;      // the first retry within half a second...
const BACKOFF_CAP_MS = 15000;      // ...doubling up to 15 s
const QUIET_BEFORE_PING_MS = 20000;
const PONG_DEADLINE_MS = 10000;    // a socket that does not answer is dead
const WATCHDOG_EVERY_MS = 5000;

// Capped exponential backoff with "equal jitter": between half and all of
// the ceiling, so a room full of phones does not come back in lockstep.
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  return ceiling / 2 + random() * ceiling / 2;
}

// One change applied to tallies (a Map tid -> {tid, track, artist, up, down}),
// by the rules of docs/protocol.md. Returns the track's row; a track left with
// no votes leaves the map (the row is returned with its zeros).
export function applyChange(tracks, change) {
  if (change.tid === null || change.tid === undefined) return null;
  let row = tracks.get(change.tid);
  if (!row) {
    row = {tid: change.tid, track: change.track, artist: change.artist, up: 0, down: 0};
    tracks.set(change.tid, row);
  }
  row.track = change.track;
  row.artist = change.artist;
  const key = (up) => (up ? "up" : "down");
  if (change.op === "insert") {
    row[key(change.up)] += 1;
  } else if (change.op === "update") {
    if (change.prev !== change.up) {
      row[key(change.prev)] -= 1;
      row[key(change.up)] += 1;
    }
  } else if (change.op === "delete") {
    row[key(change.up)] -= 1;
  }
  if (row.up === 0 && row.down === 0) tracks.delete(change.tid);
  return row;
}

// Tracks ranked: net votes, then up votes, then name, then id (a stable order).
export function rank(tracks) {
  const name = (row) => (row.track === null || row.track === undefined ? "" : String(row.track));
  return Array.from(tracks.values()).sort((a, b) =>
    (b.up - b.down) - (a.up - a.down) || b.up - a.up ||
    name(a).localeCompare(name(b)) || a.tid - b.tid);
}

// The daemon this module was served by: ws(s)://its host/.
function defaultUrl() {
  const url = new URL("/", import.meta.url);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function parseEvent(value) {
  if (typeof value === "string" && value.toUpperCase() === "ALL") return "ALL";
  const text = String(value);
  if (/^[0-9]{1,18}$/.test(text) && Number(text) > 0) return Number(text);
  throw new TypeError(`partysense: "event" is an event id or "ALL", not ${JSON.stringify(value)}`);
}

const nothing = () => {};

// The daemon refuses this page's Origin (--allowed-origins): it opens the
// socket only to close it with this code and "origin_not_allowed: …".
// Retrying cannot change that, so the client stops and says so.
const REFUSED_FOR_GOOD = 4403;

// Refusals that retrying will not change (a typo'd event id, a bad request).
const REFUSED_TEXT = {
  unknown_event: "no such event",
  bad_event_id: "not an event id",
  too_many_subscriptions: "too many subscriptions",
  bad_request: "refused",
  server_error: "the server could not read the event",
  origin_not_allowed: "this page may not connect to the live server",
};

class Live {
  constructor(options) {
    this.url = options.url || defaultUrl();
    this.event = parseEvent(options.event === undefined ? "ALL" : options.event);
    this.token = options.token || null;
    this.recent = Math.max(0, Math.min(500, options.recent | 0));
    this._getToken = options.getToken || null;
    this._onSnapshot = options.onSnapshot || nothing;
    this._onChange = options.onChange || nothing;
    // Presence is asked for only by a page that shows it (docs/protocol.md).
    this._onPresence = options.onPresence || null;
    this._onStatus = options.onStatus || nothing;
    this._onError = options.onError || nothing;
    this._reset();
    this.status = {state: "connecting", seconds: 0, reason: "", text: "connecting…"};
    this._socket = null;
    this._closed = false;
    this._refusedForGood = false;  // closed with REFUSED_FOR_GOOD: no more attempts
    this._everLive = false;
    this._attempt = 0;
    this._retryTimer = null;
    this._retryAt = 0;
    this._retryWhy = "";
    this._resubscribeTimer = null;
    this._pending = null;        // id of the subscribe awaiting its reply
    this._subscribed = false;    // the daemon holds a subscription for us
    this._nextId = 1;
    this._lastHeard = 0;
    this._pingSentAt = 0;
    this._refreshing = null;     // the getToken() promise in flight
    this._freshTried = false;    // a fresh token was tried for this subscribe
    this._timers = [
      setInterval(() => this._watchdog(), WATCHDOG_EVERY_MS),
      setInterval(() => { if (this._retryTimer !== null) this._countdown(); }, 1000),
    ];
    this._listeners = [];
    if (typeof window !== "undefined" && typeof document !== "undefined") {
      this._listen(window, "online", () => this._reconnectNow());
      this._listen(window, "offline", () => this._wentOffline());
      // A phone waking up: check the socket now, and skip what is left of the backoff.
      this._listen(document, "visibilitychange", () => {
        if (document.visibilityState !== "visible") return;
        if (this._open()) this._ping();
        else if (!this._socket) this._reconnectNow();
      });
    }
    this._connect();
  }

  // -- the public API -----------------------------------------------------------

  // Tracks ranked by net votes (at most ``limit``), for a leaderboard.
  ranking(limit = Infinity) {
    return rank(this.tracks).slice(0, limit);
  }

  // Watch another event (or "ALL") on the same connection: fresh tallies.
  select(event) {
    const next = parseEvent(event);
    if (next === this.event) return;
    if (this._open() && this._subscribed) {
      this._send({type: "unsubscribe", event: this.event, id: "u" + this._nextId++});
    }
    this.event = next;
    this._reset();
    clearTimeout(this._resubscribeTimer);
    if (this._open()) this._subscribe();
  }

  // A new token (e.g. after "unauthorized"): used at once, nothing is lost.
  setToken(token) {
    this.token = token || null;
    this._freshTried = false;
    if (!this._open() || !this.token) return;
    if (this._subscribed) this._send({type: "auth", token: this.token, id: "a" + this._nextId++});
    else if (this._pending === null) this._subscribe();
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    for (const timer of this._timers) clearInterval(timer);
    clearTimeout(this._retryTimer);
    clearTimeout(this._resubscribeTimer);
    this._retryTimer = null;
    for (const [target, name, handler] of this._listeners) target.removeEventListener(name, handler);
    this._abandon("closed");
    this._setStatus("closed", "closed");
  }

  // -- the connection -----------------------------------------------------------

  _reset() {
    this.title = "";
    this.tracks = new Map();
    this.cursor = null;      // highest seq applied (or the snapshot's cursor)
    this.ready = false;      // a snapshot (or "subscribed") has arrived
    this.watchers = null;    // how many watch the event, every daemon (onPresence)
    this._backfill = false;  // the firehose asked again from a little before now
  }

  _listen(target, name, handler) {
    target.addEventListener(name, handler);
    this._listeners.push([target, name, handler]);
  }

  _open() {
    return this._socket !== null && this._socket.readyState === WebSocket.OPEN;
  }

  _send(message) {
    if (this._open()) this._socket.send(JSON.stringify(message));
  }

  _offline() {
    return typeof navigator !== "undefined" && navigator.onLine === false;
  }

  _connect() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    if (this._socket || this._closed || this._refusedForGood) return;
    if (this._offline()) {
      this._setStatus("offline", "offline: waiting for the network");
      return;
    }
    if (this._everLive) this._setStatus("reconnecting", "reconnecting…");
    else this._setStatus("connecting", "connecting…");
    let socket;
    try {
      socket = new WebSocket(this.url, SUBPROTOCOL);
    } catch (error) {
      this._retryLater("cannot connect");
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      if (socket !== this._socket) return;
      this._lastHeard = Date.now();
      this._pingSentAt = 0;
      this._freshTried = false;
      this._subscribe();
    };
    socket.onmessage = (frame) => {
      if (socket !== this._socket) return;
      this._lastHeard = Date.now();
      this._pingSentAt = 0;
      this._receive(frame.data);
    };
    socket.onclose = (closed) => {
      if (socket !== this._socket) return;
      this._forget();
      if (closed.code === REFUSED_FOR_GOOD) this._refuseForGood(closed.reason);
      else this._retryLater(closed.reason || "connection lost");
    };
  }

  // Drop the socket without waiting for a close handshake that a dead
  // network would never complete.
  _abandon(why) {
    const socket = this._socket;
    this._forget();
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      try { socket.close(4000, why.slice(0, 60)); } catch (error) { /* already closed */ }
    }
  }

  _forget() {
    this._socket = null;
    this._pending = null;
    this._subscribed = false;
    clearTimeout(this._resubscribeTimer);
  }

  _retryLater(why) {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    if (this._closed) return;
    if (this._offline()) {
      this._setStatus("offline", "offline: waiting for the network");
      return;
    }
    const delay = backoffDelay(this._attempt++);
    this._retryAt = Date.now() + delay;
    this._retryWhy = why;
    this._retryTimer = setTimeout(() => this._connect(), delay);
    this._countdown();
  }

  _countdown() {
    const seconds = Math.max(0, Math.ceil((this._retryAt - Date.now()) / 1000));
    this._setStatus("reconnecting", `reconnecting in ${seconds} s (${this._retryWhy})`,
                    seconds, this._retryWhy);
  }

  // Refused whatever we do (this page's Origin): no more attempts, not even
  // when the network comes back or the tab is shown again; say why.
  _refuseForGood(reason) {
    this._refusedForGood = true;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const kind = String(reason || "").split(":")[0] || "forbidden";
    this._onError({type: "error", error: kind, message: reason || "refused"}, this);
    this._setStatus("refused", REFUSED_TEXT[kind] || "refused", 0, kind);
  }

  _reconnectNow() {
    if (this._closed || this._refusedForGood) return;
    this._attempt = 0;
    if (!this._socket) this._connect();
  }

  _wentOffline() {
    if (this._closed || this._refusedForGood) return;
    this._abandon("offline");
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._setStatus("offline", "offline: waiting for the network");
  }

  _ping() {
    if (this._pingSentAt) return;
    this._pingSentAt = Date.now();
    this._send({type: "ping", id: "p" + this._nextId++});
  }

  _watchdog() {
    if (!this._open()) return;
    const now = Date.now();
    if (this._pingSentAt && now - this._pingSentAt > PONG_DEADLINE_MS) {
      this._abandon("no answer to ping");
      this._retryLater("no answer from the server");
    } else if (now - this._lastHeard > QUIET_BEFORE_PING_MS) {
      this._ping();
    }
  }

  _setStatus(state, text, seconds = 0, reason = "") {
    const same = this.status.state === state && this.status.text === text;
    this.status = {state, seconds, reason, text};
    if (!same) this._onStatus(this.status, this);
  }

  // -- the protocol -------------------------------------------------------------

  _subscribe() {
    if (!this._open()) return;
    const id = "s" + this._nextId++;
    const request = {type: "subscribe", event: this.event, id};
    if (this.ready && this.cursor !== null) request.cursor = this.cursor;
    if (this.token) request.token = this.token;
    if (this._onPresence && typeof this.event === "number") request.presence = true;
    this._pending = id;
    this._subscribed = true;
    this._send(request);
  }

  _receive(text) {
    let message;
    try { message = JSON.parse(text); } catch (error) { return; }
    if (!message || typeof message !== "object") return;
    switch (message.type) {
      case "snapshot": this._snapshot(message); break;
      case "subscribed": this._subscribedTo(message); break;
      case "change": this._change(message); break;
      case "presence": this._presence(message); break;
      case "error": this._error(message); break;
      case "token_expired": this._tokenExpired(); break;
      case "unsubscribed": this._unsubscribed(message); break;
      default: break;  // pong, authorized: hearing them is enough
    }
  }

  _becameLive() {
    this._pending = null;
    this._attempt = 0;
    this._everLive = true;
    this._freshTried = false;
    this.ready = true;
    this._backfill = false;
    this._setStatus("live", "live");
  }

  _snapshot(message) {
    // The answer to our subscribe, or one the daemon sends unasked (no id,
    // "reset": true) when its change log started over: fresh tallies either way.
    const unasked = message.id === undefined && message.reset === true && this.ready
      && this._pending === null && message.event === this.event;
    if (message.id !== this._pending && !unasked) return;
    const tracks = new Map();
    for (const entry of message.tracks || []) {
      tracks.set(entry.tid, {tid: entry.tid, track: entry.track, artist: entry.artist,
                             up: entry.up | 0, down: entry.down | 0});
    }
    const reset = Boolean(message.reset) && this.ready;
    this.tracks = tracks;
    this.cursor = message.cursor;
    if (typeof message.title === "string") this.title = message.title;
    this._becameLive();
    this._onSnapshot(this, {reset});
  }

  _subscribedTo(message) {
    if (message.id !== this._pending) return;
    if (this.cursor === null && typeof message.cursor === "number") {
      this.cursor = message.cursor;
      if (this.event === "ALL" && this.recent > 0 && message.cursor > 0) {
        // The firehose has no snapshot: subscribing again with a cursor a
        // little before now (it restarts the subscription) replays the
        // latest changes, so a feed does not open empty.
        this.cursor = Math.max(0, message.cursor - this.recent);
        this.ready = true;
        this._backfill = true;
        this._subscribe();
        return;
      }
    }
    this._becameLive();
  }

  _change(change) {
    // Before the reply to our subscribe, a change can only be a leftover of
    // a subscription we have just left.
    if (this._pending !== null || !this.ready) return;
    if (typeof change.seq !== "number") return;
    if (typeof this.event === "number" && change.eid !== this.event) return;
    if ("sub" in change && change.sub !== this.event) return;
    if (this.cursor !== null && change.seq <= this.cursor) return;  // seen already
    this.cursor = change.seq;
    const row = typeof this.event === "number" ? applyChange(this.tracks, change) : null;
    this._onChange(change, this, row);
  }

  _presence(message) {
    // One of an event we have left, or before our subscription's reply: not ours.
    if (this._pending !== null || message.event !== this.event) return;
    if (typeof message.watchers !== "number" || message.watchers < 0) return;
    this.watchers = message.watchers;
    if (this._onPresence) this._onPresence(message.watchers, this);
  }

  _error(message) {
    if (message.id !== this._pending) return;
    this._pending = null;
    this._subscribed = false;
    const kind = message.error;
    if (kind === "unavailable" || kind === "too_many_subscribes") {
      // The daemon is up but its database is not (or it is busy): ask again, backing off.
      const delay = backoffDelay(this._attempt++);
      const why = kind === "unavailable" ? "database unreachable" : "server busy";
      this._setStatus("reconnecting", `${why}, retrying in ${Math.ceil(delay / 1000)} s`,
                      Math.ceil(delay / 1000), why);
      clearTimeout(this._resubscribeTimer);
      this._resubscribeTimer = setTimeout(() => this._subscribe(), delay);
      return;
    }
    if (kind === "unauthorized" || kind === "forbidden") {
      this._refuseOrRefresh(message);
      return;
    }
    this._onError(message, this);
    this._setStatus("refused", REFUSED_TEXT[kind] || "refused", 0, String(kind));
  }

  // "unauthorized" (no token, or an expired one) or "forbidden": one fresh
  // token from getToken(), then subscribe again from the cursor; if that one
  // is refused too, stop and say so (no loop on a server that refuses all).
  _refuseOrRefresh(message) {
    if (this._getToken && !this._freshTried) {
      this._freshTried = true;
      this._refresh().then((ok) => {
        if (ok && this._open() && this._pending === null) this._subscribe();
        else if (!ok) this._unauthorized(message);
      });
      return;
    }
    this._unauthorized(message);
  }

  _unauthorized(message) {
    this._onError(message, this);
    this._setStatus("unauthorized", message.message || "a valid token is needed", 0,
                    String(message.error || "unauthorized"));
  }

  // The daemon says the token expires: a fresh one within its grace (30 s)
  // keeps every subscription, and nothing is lost.
  _tokenExpired() {
    if (!this._getToken) return;  // the subscription ends after the grace
    const socket = this._socket;
    this._refresh().then((ok) => {
      if (ok && socket === this._socket) {
        this._send({type: "auth", token: this.token, id: "a" + this._nextId++});
      }
    });
  }

  _unsubscribed(message) {
    if (message.event !== this.event || !message.reason) return;
    this._subscribed = false;
    // The grace passed (or the token no longer allows the event): a fresh
    // token resumes from the cursor, so even then nothing is lost.
    this._refuseOrRefresh({type: "error", error: message.reason === "forbidden"
      ? "forbidden" : "unauthorized", message: `the token ${message.reason === "forbidden"
      ? "does not allow this event" : "expired"}`});
  }

  _refresh() {
    if (!this._refreshing) {
      this._refreshing = Promise.resolve()
        .then(() => this._getToken())
        .then((token) => {
          if (typeof token !== "string" || token === "") return false;
          this.token = token;
          return true;
        }, (error) => {
          this._onError({type: "error", error: "get_token_failed",
                         message: String(error && error.message || error)}, this);
          return false;
        })
        .finally(() => { this._refreshing = null; });
    }
    return this._refreshing;
  }
}

// Connect to a partysense-live daemon and keep an event's tallies live.
//
//   options.event       an event id, or "ALL" (every event's changes, no tallies)
//   options.url         the daemon's WebSocket URL (default: where this module came from)
//   options.token       a signed token, when the daemon requires one
//   options.getToken    () => token (or a Promise of one): asked when the token
//                       expires or is refused
//   options.recent      "ALL" only: open with the latest N changes (default 0)
//   options.onSnapshot  (live, {reset}) the tallies, first and after a reset
//   options.onChange    (change, live, row) each change once, in order, after
//                       the tallies took it in (row: the track's new counts)
//   options.onPresence  (watchers, live) how many watch the event now, across every
//                       daemon (this page included): after the tallies, then
//                       whenever it changes (within --presence-interval, 5 s)
//   options.onStatus    ({state, seconds, reason, text}, live)
//   options.onError     ({error, message}, live) a refusal from the daemon
//
// Returns the live object: .tracks (Map tid -> {tid, track, artist, up, down}),
// .title, .cursor, .watchers, .status, .ranking(limit), .select(event), .setToken(token),
// .close(). docs/client.md has the details and a Django example.
export function connect(options = {}) {
  return new Live(options);
}
