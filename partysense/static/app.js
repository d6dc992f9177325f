// The live page: one event's tracks ranked by net votes, and the latest votes.
//
// It speaks the partysense.v2 WebSocket dialect (docs/protocol.md):
//   -> {"type": "subscribe", "event": 3, "id": "s1"}
//   <- {"type": "snapshot", "id": "s1", "cursor": 120, "title": ..., "tracks": [...]}
//   <- {"type": "change", "eid": 3, "seq": 121, ...}          one per vote change
// After a reconnect it subscribes again with "cursor": the highest seq it has
// applied, and the daemon replays exactly what it missed ("subscribed"), or
// sends a fresh snapshot with "reset": true when its log no longer reaches back.
//
// Every name from the database is set with textContent, never as markup.
"use strict";

(() => {
  const SUBPROTOCOL = "partysense.v2";
  const BACKOFF_FIRST_MS = 500;     // first retry within half a second...
  const BACKOFF_CAP_MS = 15000;     // ...doubling up to 15 s, with jitter
  const QUIET_BEFORE_PING_MS = 20000;
  const PONG_DEADLINE_MS = 10000;   // a socket that does not answer is dead
  const WATCHDOG_EVERY_MS = 5000;
  const FEED_LENGTH = 40;
  const RANKING_LENGTH = 100;
  const MERGE_WITHIN_MS = 10000;    // Django's insert-then-update shows as one vote
  const BACKFILL_CHANGES = 20;      // every event's view opens with the latest votes
  // A signed access token, when the daemon requires one, from the URL's
  // fragment (/?event=3#token=...): a fragment is never sent to a server, so
  // it reaches no proxy's or daemon's log.
  const TOKEN = new URLSearchParams(location.hash.slice(1)).get("token");

  const byId = (id) => document.getElementById(id);
  const ui = {
    title: byId("title"),
    subtitle: byId("subtitle"),
    picker: byId("picker"),
    input: byId("event"),
    choices: byId("events"),
    status: byId("status"),
    statusText: byId("status-text"),
    notice: byId("notice"),
    rankingHeading: byId("ranking-heading"),
    totals: byId("totals"),
    ranking: byId("ranking"),
    rankingEmpty: byId("ranking-empty"),
    eventList: byId("event-list"),
    feed: byId("feed"),
    feedEmpty: byId("feed-empty"),
    rowTemplate: byId("row-template"),
  };

  // What the page knows about the current selection.
  const model = {
    selection: null,      // an event id (number), "ALL", or null
    title: "",
    tracks: new Map(),    // tid -> {tid, track, artist, up, down}
    cursor: null,         // highest seq applied (or the snapshot's cursor)
    ready: false,         // a snapshot (or subscribed) has arrived
    backfill: false,      // asked the firehose again from a little before now
  };

  // The connection and its bookkeeping.
  const link = {
    socket: null,
    state: "connecting",
    everLive: false,
    attempt: 0,
    retryTimer: null,
    retryAt: 0,
    retryWhy: "",
    pending: null,        // id of the subscribe awaiting its reply
    subscribedTo: null,   // what to unsubscribe from when the selection changes
    nextId: 1,
    lastHeard: 0,
    pingSentAt: 0,
    resubscribeTimer: null,
  };

  // -- the selection ----------------------------------------------------------

  function parseSelection(text) {
    const value = String(text || "").trim();
    if (value.toUpperCase() === "ALL") return "ALL";
    if (/^[0-9]{1,10}$/.test(value) && Number(value) > 0) return Number(value);
    return null;
  }

  function choose(selection) {
    if (selection === model.selection) return;
    model.selection = selection;
    model.title = "";
    model.tracks = new Map();
    model.cursor = null;
    model.ready = false;
    model.backfill = false;
    ui.input.value = selection === null ? "" : String(selection);
    const url = new URL(location.href);
    url.searchParams.set("event", String(selection));
    history.replaceState(null, "", url);
    clearFeed();
    hideNotice();
    render();
    if (link.socket && link.socket.readyState === WebSocket.OPEN) {
      if (link.subscribedTo !== null) {
        send({type: "unsubscribe", event: link.subscribedTo, id: "u" + link.nextId++});
        link.subscribedTo = null;
      }
      subscribe();
    }
  }

  ui.picker.addEventListener("submit", (event) => {
    event.preventDefault();
    const selection = parseSelection(ui.input.value);
    if (selection === null) {
      showNotice("An event is a number (like 3), or ALL for every event.");
      return;
    }
    choose(selection);
  });

  // -- the connection ---------------------------------------------------------

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + location.host + "/";
  }

  function send(message) {
    if (link.socket && link.socket.readyState === WebSocket.OPEN) {
      link.socket.send(JSON.stringify(message));
    }
  }

  function connect() {
    clearTimeout(link.retryTimer);
    link.retryTimer = null;
    if (link.socket) return;
    if (!navigator.onLine) {
      setState("offline", "offline: waiting for the network");
      return;
    }
    setState(link.everLive ? "reconnecting" : "connecting",
             link.everLive ? "reconnecting…" : "connecting…");
    let socket;
    try {
      socket = new WebSocket(socketUrl(), SUBPROTOCOL);
    } catch (error) {
      retryLater("cannot connect");
      return;
    }
    link.socket = socket;
    socket.onopen = () => {
      if (socket !== link.socket) return;
      link.lastHeard = Date.now();
      link.pingSentAt = 0;
      subscribe();
    };
    socket.onmessage = (frame) => {
      if (socket !== link.socket) return;
      link.lastHeard = Date.now();
      link.pingSentAt = 0;
      receive(frame.data);
    };
    socket.onclose = (closed) => {
      if (socket !== link.socket) return;
      forget();
      retryLater(closed.reason || "connection lost");
    };
  }

  // Drop the current socket without waiting for a close handshake that a
  // dead network would never complete.
  function abandon(why) {
    const socket = link.socket;
    forget();
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      try { socket.close(4000, why.slice(0, 60)); } catch (error) { /* already closed */ }
    }
  }

  function forget() {
    link.socket = null;
    link.pending = null;
    link.subscribedTo = null;
    clearTimeout(link.resubscribeTimer);
  }

  // Capped exponential backoff with "equal jitter": between half and all of
  // the ceiling, so a room full of phones does not come back in lockstep.
  function backoffDelay(attempt) {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_FIRST_MS * 2 ** attempt);
    return ceiling / 2 + Math.random() * ceiling / 2;
  }

  function retryLater(why) {
    clearTimeout(link.retryTimer);
    if (!navigator.onLine) {
      setState("offline", "offline: waiting for the network");
      return;
    }
    const delay = backoffDelay(link.attempt++);
    link.retryAt = Date.now() + delay;
    link.retryWhy = why;
    showCountdown();
    link.retryTimer = setTimeout(connect, delay);
  }

  function showCountdown() {
    const seconds = Math.max(0, Math.ceil((link.retryAt - Date.now()) / 1000));
    setState("reconnecting", `reconnecting in ${seconds} s (${link.retryWhy})`);
  }
  setInterval(() => { if (link.retryTimer !== null) showCountdown(); }, 1000);

  function reconnectNow() {
    link.attempt = 0;
    if (!link.socket) connect();
  }

  window.addEventListener("online", reconnectNow);
  window.addEventListener("offline", () => {
    abandon("offline");
    clearTimeout(link.retryTimer);
    link.retryTimer = null;
    setState("offline", "offline: waiting for the network");
  });

  // A phone waking up: check the socket at once instead of at the next tick,
  // and skip what is left of the backoff.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    if (link.socket && link.socket.readyState === WebSocket.OPEN) {
      ping();
    } else if (!link.socket) {
      reconnectNow();
    }
  });

  function ping() {
    if (link.pingSentAt) return;
    link.pingSentAt = Date.now();
    send({type: "ping", id: "p" + link.nextId++});
  }

  function watchdog() {
    const socket = link.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const now = Date.now();
    if (link.pingSentAt && now - link.pingSentAt > PONG_DEADLINE_MS) {
      abandon("no answer to ping");
      retryLater("no answer from the server");
    } else if (now - link.lastHeard > QUIET_BEFORE_PING_MS) {
      ping();
    }
  }
  setInterval(watchdog, WATCHDOG_EVERY_MS);

  // -- the protocol -----------------------------------------------------------

  function subscribe() {
    if (model.selection === null) {
      setState("live", "live");
      return;
    }
    const id = "s" + link.nextId++;
    const request = {type: "subscribe", event: model.selection, id};
    if (model.ready && model.cursor !== null) request.cursor = model.cursor;
    if (TOKEN) request.token = TOKEN;
    link.pending = id;
    link.subscribedTo = model.selection;
    send(request);
  }

  function receive(text) {
    let message;
    try { message = JSON.parse(text); } catch (error) { return; }
    if (!message || typeof message !== "object") return;
    switch (message.type) {
      case "snapshot": onSnapshot(message); break;
      case "subscribed": onSubscribed(message); break;
      case "change": onChange(message); break;
      case "error": onError(message); break;
      default: break;  // pong, unsubscribed: hearing them is enough
    }
  }

  function becameLive() {
    link.pending = null;
    link.attempt = 0;
    link.everLive = true;
    model.ready = true;
    model.backfill = false;
    setState("live", "live");
  }

  function onSnapshot(message) {
    if (message.id !== link.pending) return;
    model.tracks = new Map();
    for (const entry of message.tracks || []) {
      model.tracks.set(entry.tid, {
        tid: entry.tid, track: entry.track, artist: entry.artist,
        up: entry.up | 0, down: entry.down | 0,
      });
    }
    model.cursor = message.cursor;
    if (typeof message.title === "string") model.title = message.title;
    if (message.reset && !model.backfill) {
      showNotice("The page was away longer than the daemon keeps history: tallies reloaded.");
    }
    becameLive();
    render();
  }

  function onSubscribed(message) {
    if (message.id !== link.pending) return;
    if (model.cursor === null && typeof message.cursor === "number") {
      model.cursor = message.cursor;
      if (model.selection === "ALL" && message.cursor > 0) {
        // The firehose has no snapshot: subscribing again with a cursor a
        // little before now (it restarts the subscription) replays the
        // latest votes, so the feed does not open empty.
        model.cursor = Math.max(0, message.cursor - BACKFILL_CHANGES);
        model.ready = true;
        model.backfill = true;
        subscribe();
        return;
      }
    }
    becameLive();
    render();
  }

  function onChange(change) {
    // Before the reply to our subscribe, a change can only be a leftover of
    // a subscription we have just left.
    if (link.pending !== null || !model.ready) return;
    if (typeof change.seq !== "number") return;
    if (typeof model.selection === "number" && change.eid !== model.selection) return;
    if ("sub" in change && change.sub !== model.selection) return;
    if (model.cursor !== null && change.seq <= model.cursor) return;  // seen already
    model.cursor = change.seq;
    if (typeof model.selection === "number") applyToTallies(change);
    addToFeed(change);
    render();
  }

  function onError(message) {
    if (message.id !== link.pending) return;
    link.pending = null;
    link.subscribedTo = null;
    if (message.error === "unavailable") {
      // The daemon is up but its database is not: ask again, backing off.
      const delay = backoffDelay(link.attempt++);
      setState("reconnecting",
               `database unreachable, retrying in ${Math.ceil(delay / 1000)} s`);
      clearTimeout(link.resubscribeTimer);
      link.resubscribeTimer = setTimeout(subscribe, delay);
      return;
    }
    link.attempt = 0;
    setState("live", "live");
    showNotice(message.message || message.error || "the daemon refused the request");
  }

  // The rules of docs/protocol.md: insert adds one, update moves one, delete
  // removes one; a track left with no votes leaves the ranking.
  function applyToTallies(change) {
    if (change.tid === null || change.tid === undefined) return;
    let row = model.tracks.get(change.tid);
    if (!row) {
      row = {tid: change.tid, track: change.track, artist: change.artist, up: 0, down: 0};
      model.tracks.set(change.tid, row);
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
    if (row.up === 0 && row.down === 0) model.tracks.delete(change.tid);
  }

  // -- drawing ----------------------------------------------------------------

  const rows = new Map();   // tid -> <li>
  let drawPending = false;

  function render() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      drawHeader();
      drawRanking();
    });
  }

  function setState(state, text) {
    link.state = state;
    ui.status.dataset.state = state;
    document.body.dataset.state = state;  // the board dims while not live
    ui.statusText.textContent = text;
  }

  function showNotice(text) {
    ui.notice.textContent = text;
    ui.notice.hidden = false;
  }

  function hideNotice() {
    ui.notice.hidden = true;
    ui.notice.textContent = "";
  }

  function trackName(value) { return value === null || value === undefined ? "untitled track" : String(value); }
  function artistName(value) { return value === null || value === undefined ? "unknown artist" : String(value); }

  function drawHeader() {
    let title = "PartySense live";
    let subtitle = "pick an event";
    if (model.selection === "ALL") {
      title = "All events";
      subtitle = "every vote, the moment it commits";
    } else if (typeof model.selection === "number") {
      title = model.title || `Event ${model.selection}`;
      subtitle = `event ${model.selection}`;
    }
    ui.title.textContent = title;
    ui.subtitle.textContent = subtitle;
    document.title = `${title} · PartySense live`;
  }

  function signed(value) {
    if (value > 0) return "+" + value;
    if (value < 0) return "\u2212" + -value;
    return "0";
  }

  function ranked() {
    return Array.from(model.tracks.values()).sort((a, b) =>
      (b.up - b.down) - (a.up - a.down) ||
      b.up - a.up ||
      trackName(a.track).localeCompare(trackName(b.track)) ||
      a.tid - b.tid);
  }

  function drawRanking() {
    const perEvent = typeof model.selection === "number";
    ui.rankingHeading.firstChild.textContent = perEvent ? "Ranking " : "Events ";
    const order = perEvent ? ranked().slice(0, RANKING_LENGTH) : [];
    let up = 0, down = 0;
    for (const track of model.tracks.values()) { up += track.up; down += track.down; }
    ui.totals.textContent = perEvent && model.ready ? `▲ ${up} · ▼ ${down}` : "";
    const wanted = new Set(order.map((track) => track.tid));
    for (const [tid, li] of rows) {
      if (!wanted.has(tid)) { li.remove(); rows.delete(tid); }
    }
    order.forEach((track, index) => {
      let li = rows.get(track.tid);
      if (!li) {
        li = ui.rowTemplate.content.firstElementChild.cloneNode(true);
        li.dataset.tid = String(track.tid);
        rows.set(track.tid, li);
      }
      drawRow(li, track, index + 1);
      if (ui.ranking.children[index] !== li) {
        ui.ranking.insertBefore(li, ui.ranking.children[index] || null);
      }
    });
    ui.rankingEmpty.textContent = !perEvent
      ? "Pick an event to see its tracks ranked. The feed shows every vote of every event."
      : model.ready ? "No votes yet." : "Loading the tallies…";
    ui.rankingEmpty.hidden = order.length > 0;
    ui.eventList.hidden = perEvent || ui.eventList.children.length === 0;
  }

  function drawRow(li, track, rank) {
    const part = (name) => li.querySelector("." + name);
    const changed = li.dataset.up !== String(track.up) || li.dataset.down !== String(track.down);
    li.dataset.up = String(track.up);
    li.dataset.down = String(track.down);
    part("rank").textContent = String(rank);
    part("name").textContent = trackName(track.track);
    part("artist").textContent = artistName(track.artist);
    part("up").textContent = "▲ " + track.up;
    part("down").textContent = "▼ " + track.down;
    part("net").textContent = signed(track.up - track.down);
    const total = track.up + track.down;
    li.style.setProperty("--share", total ? `${(100 * track.up / total).toFixed(1)}%` : "0%");
    li.classList.toggle("negative", track.up < track.down);
    li.classList.toggle("even", track.up === track.down);
    if (changed) flash(li);
  }

  function flash(element) {
    element.classList.remove("bump");
    void element.offsetWidth;  // restart the animation
    element.classList.add("bump");
  }

  // -- the feed ---------------------------------------------------------------

  const clock = new Intl.DateTimeFormat([], {
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"});
  const feedByVote = new Map();  // vote id -> <li>, for merging a vote's changes

  function clearFeed() {
    ui.feed.textContent = "";
    feedByVote.clear();
    ui.feedEmpty.hidden = false;
  }

  function describe(op, up, prev) {
    if (op === "insert") return up ? "voted up" : "voted down";
    if (op === "update") return up ? "changed to up" : "changed to down";
    if (op === "delete") return up ? "withdrew an up vote" : "withdrew a down vote";
    return String(op);
  }

  function addToFeed(change) {
    let li = feedByVote.get(change.vote);
    let op = change.op;
    // Django casts a vote as an INSERT (up by default) then an UPDATE that sets
    // the real direction: shown as the one vote the guest actually cast.
    if (li && op === "update" && li.dataset.op === "insert" &&
        Date.now() - Number(li.dataset.at) < MERGE_WITHIN_MS) {
      op = "insert";
    } else {
      li = null;
    }
    if (!li) {
      li = document.createElement("li");
      li.dataset.at = String(Date.now());
      for (const name of ["when", "arrow", "what", "action"]) {
        const span = document.createElement("span");
        span.className = name;
        li.appendChild(span);
      }
      const what = li.querySelector(".what");
      for (const name of ["name", "artist", "event"]) {
        const span = document.createElement("span");
        span.className = name;
        what.appendChild(span);
      }
    }
    li.dataset.op = op;
    li.dataset.vote = String(change.vote);
    li.className = "vote " + (change.up ? "is-up" : "is-down") + (op === "delete" ? " withdrawn" : "");
    const part = (name) => li.querySelector("." + name);
    // When it committed (a replayed vote is older than its arrival).
    part("when").textContent = clock.format(
      typeof change.ts === "number" ? new Date(change.ts * 1000) : new Date());
    part("arrow").textContent = change.up ? "▲" : "▼";
    part("name").textContent = trackName(change.track);
    part("artist").textContent = artistName(change.artist);
    part("event").textContent = model.selection === "ALL" && change.event != null ? String(change.event) : "";
    part("action").textContent = describe(op, change.up, change.prev);
    feedByVote.set(change.vote, li);
    ui.feed.insertBefore(li, ui.feed.firstChild);
    flash(li);
    while (ui.feed.children.length > FEED_LENGTH) {
      const last = ui.feed.lastChild;
      feedByVote.delete(Number(last.dataset.vote));
      last.remove();
    }
    ui.feedEmpty.hidden = true;
  }

  // -- the event list (optional: an older daemon has no /api/events) -------------

  async function loadEvents() {
    try {
      const headers = TOKEN ? {Authorization: "Bearer " + TOKEN} : {};
      const response = await fetch("/api/events", {cache: "no-store", headers});
      if (!response.ok) return;
      const events = await response.json();
      if (!Array.isArray(events)) return;
      ui.choices.textContent = "";
      ui.eventList.textContent = "";
      const all = document.createElement("option");
      all.value = "ALL";
      all.textContent = "every event";
      ui.choices.appendChild(all);
      for (const entry of events) {
        const option = document.createElement("option");
        option.value = String(entry.id);
        option.textContent = String(entry.title);
        ui.choices.appendChild(option);
        ui.eventList.appendChild(eventButton(entry));
      }
      render();
    } catch (error) {
      // The list is a convenience; typing an id always works.
    }
  }

  function eventButton(entry) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.event = String(entry.id);
    const id = document.createElement("span");
    id.className = "event-id";
    id.textContent = String(entry.id);
    const title = document.createElement("span");
    title.className = "event-title";
    title.textContent = entry.title === null ? "untitled event" : String(entry.title);
    button.append(id, title);
    button.addEventListener("click", () => choose(entry.id));
    item.appendChild(button);
    return item;
  }

  // -- start ------------------------------------------------------------------

  const initial = parseSelection(new URLSearchParams(location.search).get("event") || "ALL");
  choose(initial === null ? "ALL" : initial);
  loadEvents();
  connect();
})();
