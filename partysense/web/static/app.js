// The live page: one event's tracks ranked by net votes, the party's pulse
// (votes per minute), and the latest votes; or, with ?view=screen, the top 10
// in large type for a projector.
//
// The connection (the partysense.v2 handshake, snapshot then changes, exact
// tallies, resume by cursor, reconnect with backoff) is /client.js, the same
// module other pages embed (docs/client.md); this file only draws.
//
// Every name from the database is set with textContent, never as markup.
import {connect} from "/client.js?v=CLIENT_VERSION";

const FEED_LENGTH = 40;
const RANKING_LENGTH = 100;
const SCREEN_LENGTH = 10;         // the projector shows the top 10
const MERGE_WITHIN_MS = 10000;    // Django's insert-then-update shows as one vote
const BACKFILL_CHANGES = 20;      // every event's view opens with the latest votes
const PULSE_MINUTES = 30;
const PULSE_RETRY_MS = 15000;
const PULSE_TRIES = 5;
const MOVE_MS = 700;              // a row sliding to its new rank
// A signed access token, when the daemon requires one, from the URL's
// fragment (/?event=3#token=...): a fragment is never sent to a server, so
// it reaches no proxy's or daemon's log.
const TOKEN = new URLSearchParams(location.hash.slice(1)).get("token");
const SCREEN = new URLSearchParams(location.search).get("view") === "screen";

const byId = (id) => document.getElementById(id);
const ui = {
  title: byId("title"),
  subtitle: byId("subtitle"),
  here: byId("here"),
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
  pulse: byId("pulse"),
  pulseChart: byId("pulse-chart"),
  pulseTotal: byId("pulse-total"),
  pulsePeak: byId("pulse-peak"),
};
if (SCREEN) document.body.dataset.view = "screen";

// -- the selection ------------------------------------------------------------

function parseSelection(text) {
  const value = String(text || "").trim();
  if (value.toUpperCase() === "ALL") return "ALL";
  if (/^[0-9]{1,10}$/.test(value) && Number(value) > 0) return Number(value);
  return null;
}

const initial = parseSelection(new URLSearchParams(location.search).get("event") || "ALL");

const live = connect({
  event: initial === null ? "ALL" : initial,
  token: TOKEN,
  recent: BACKFILL_CHANGES,
  onSnapshot: (_, {reset}) => {
    if (reset) showNotice("The page was away longer than the daemon keeps history: tallies reloaded.");
    startPulse(reset);
    render();
  },
  onChange: (change) => {
    addToFeed(change);
    countInPulse(change);
    render();
  },
  onPresence: () => render(),  // "N here": every daemon's watchers of the event
  onStatus: (status) => {
    setState(status.state, status.text);
    render();
  },
  onError: (error) => showNotice(error.message || error.error || "the daemon refused the request"),
});

function choose(selection) {
  if (selection === live.event) return;
  live.select(selection);
  showSelection();
  clearFeed();
  hideNotice();
  stopPulse();
  render();
}

function showSelection() {
  ui.input.value = String(live.event);
  const url = new URL(location.href);
  url.searchParams.set("event", String(live.event));
  history.replaceState(null, "", url);
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
    drawPulse();
  });
}

function setState(state, text) {
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
  if (live.event === "ALL") {
    title = "All events";
    subtitle = "every vote, the moment it commits";
  } else if (typeof live.event === "number") {
    title = live.title || `Event ${live.event}`;
    subtitle = `event ${live.event}`;
  }
  ui.title.textContent = title;
  ui.subtitle.textContent = subtitle;
  const here = typeof live.event === "number" && live.ready && live.watchers !== null;
  ui.here.hidden = !here;
  ui.here.textContent = here ? `${live.watchers} here` : "";
  document.title = `${title} · PartySense live`;
}

function signed(value) {
  if (value > 0) return "+" + value;
  if (value < 0) return "\u2212" + -value;
  return "0";
}

function drawRanking() {
  const perEvent = typeof live.event === "number";
  ui.rankingHeading.firstChild.textContent = perEvent ? (SCREEN ? "Top 10 " : "Ranking ") : "Events ";
  const order = perEvent ? live.ranking(SCREEN ? SCREEN_LENGTH : RANKING_LENGTH) : [];
  let up = 0, down = 0;
  for (const track of live.tracks.values()) { up += track.up; down += track.down; }
  ui.totals.textContent = perEvent && live.ready ? `▲ ${up} · ▼ ${down}` : "";
  // FLIP: where each row is now, so that a row changing rank slides there.
  // (top: where it is drawn, mid-slide included; at: where it is laid out.)
  const before = new Map();
  for (const [tid, li] of rows) before.set(tid, {top: li.getBoundingClientRect().top, at: li.offsetTop});
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
  slide(before);
  ui.rankingEmpty.textContent = !perEvent
    ? "Pick an event to see its tracks ranked. The feed shows every vote of every event."
    : live.ready ? "No votes yet." : "Loading the tallies…";
  ui.rankingEmpty.hidden = order.length > 0;
  ui.eventList.hidden = perEvent || ui.eventList.children.length === 0;
}

// The rows that moved start where they were and slide to their new place
// (a transform animation: no layout work while it runs). Rows are opaque and
// stacked (style.css): the track that changed rank (the row moving furthest)
// passes over the rows it displaces, so two rows' texts never show on the same
// pixels. A row moved again while it slides goes on from where it is drawn.
const slides = new Map();  // <li> -> its running slide

function slide(before) {
  for (const [li, running] of slides) {
    if (!li.isConnected) { running.cancel(); slides.delete(li); }
  }
  if (document.hidden || matchMedia("(prefers-reduced-motion: reduce)").matches) return;
  for (const [tid, li] of rows) {
    const was = before.get(tid);
    if (was === undefined || li.offsetTop === was.at) continue;  // not moved: as it was
    const running = slides.get(li);
    if (running) running.cancel();  // measured where it is laid out, not drawn
    const delta = was.top - li.getBoundingClientRect().top;
    if (Math.abs(delta) < 1) continue;
    // The row that moves more than one place is the one that changed rank: on top.
    li.dataset.moving = Math.abs(delta) > 1.5 * li.offsetHeight ? "far" : "near";
    const move = li.animate([{transform: `translateY(${delta}px)`}, {transform: "translateY(0)"}],
                            {duration: MOVE_MS, easing: "cubic-bezier(0.2, 0.8, 0.2, 1)"});
    slides.set(li, move);
    const done = () => {
      if (slides.get(li) !== move) return;
      slides.delete(li);
      delete li.dataset.moving;
    };
    move.addEventListener("finish", done);
    move.addEventListener("cancel", done);
    ui.ranking.dataset.moves = String(Number(ui.ranking.dataset.moves || 0) + 1);
  }
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

// -- the pulse: votes per minute, the last 30 minutes ----------------------------
//
// /api/events/<id>/pulse counts the votes cast (inserts) per minute up to its
// "cursor"; the page adds the inserts after that cursor as they arrive. Its
// answer may be a few seconds old (shared by every client): the inserts seen
// since the subscription began are kept until an answer covers them, so that
// none is counted twice or missed.

const pulse = {
  event: null,
  counts: null,     // minute (epoch s) -> votes; null until loaded
  cursor: 0,        // the answer counts every insert up to this seq
  base: 0,          // the subscription's first cursor
  seen: [],         // [seq, minute] of inserts seen, until an answer reaches base
  offset: 0,        // the database's clock minus ours, seconds
  tries: 0,
  timer: null,
};

function minuteOf(seconds) { return Math.floor(seconds / 60) * 60; }
function pulseNow() { return minuteOf(Date.now() / 1000 + pulse.offset); }

function stopPulse() {
  clearTimeout(pulse.timer);
  Object.assign(pulse, {event: null, counts: null, cursor: 0, base: 0, seen: [], tries: 0, timer: null});
}

function startPulse(reset) {
  if (typeof live.event !== "number") return;
  if (pulse.event === live.event && !reset) return;
  stopPulse();
  pulse.event = live.event;
  pulse.base = live.cursor;
  loadPulse();
}

async function loadPulse() {
  const event = pulse.event;
  pulse.timer = null;
  let answer = null;
  try {
    const headers = TOKEN ? {Authorization: "Bearer " + TOKEN} : {};
    const response = await fetch(`/api/events/${event}/pulse`, {cache: "no-store", headers});
    if (response.ok) answer = await response.json();
  } catch (error) {
    // retried below
  }
  if (pulse.event !== event) return;  // another event meanwhile
  pulse.tries += 1;
  if (!answer || !Array.isArray(answer.votes)) {
    if (pulse.tries < PULSE_TRIES) pulse.timer = setTimeout(loadPulse, PULSE_RETRY_MS);
    return;
  }
  const counts = new Map();
  answer.votes.forEach((votes, index) => counts.set(answer.start + 60 * index, votes | 0));
  for (const [seq, minute] of pulse.seen) {
    if (seq > answer.cursor) counts.set(minute, (counts.get(minute) || 0) + 1);
  }
  pulse.counts = counts;
  pulse.cursor = answer.cursor;
  pulse.offset = answer.now - Date.now() / 1000;
  if (answer.cursor >= pulse.base) {
    pulse.seen = null;   // this answer covers everything before the subscription
  } else if (pulse.tries < PULSE_TRIES) {
    // A cached answer from before our snapshot: ask again once it is renewed.
    pulse.timer = setTimeout(loadPulse, 1000 * (answer.fresh_in || 1) + 250);
  }
  render();
}

function countInPulse(change) {
  if (change.op !== "insert" || pulse.event === null || change.eid !== pulse.event) return;
  const minute = minuteOf(typeof change.ts === "number" ? change.ts : Date.now() / 1000 + pulse.offset);
  if (pulse.seen !== null) pulse.seen.push([change.seq, minute]);
  if (pulse.counts !== null && change.seq > pulse.cursor) {
    pulse.counts.set(minute, (pulse.counts.get(minute) || 0) + 1);
  }
}

const SVG = "http://www.w3.org/2000/svg";

function drawPulse() {
  const shown = typeof live.event === "number";
  ui.pulse.hidden = !shown;
  if (!shown) return;
  const loaded = pulse.counts !== null;
  ui.pulse.dataset.loaded = String(loaded);
  const end = pulseNow();
  const minutes = [];
  for (let index = PULSE_MINUTES - 1; index >= 0; index--) {
    const minute = end - 60 * index;
    minutes.push([minute, loaded ? pulse.counts.get(minute) || 0 : 0]);
  }
  if (loaded) {  // forget minutes that left the window
    for (const minute of pulse.counts.keys()) if (minute < minutes[0][0]) pulse.counts.delete(minute);
  }
  const peak = Math.max(1, ...minutes.map(([, votes]) => votes));
  const total = minutes.reduce((sum, [, votes]) => sum + votes, 0);
  const chart = ui.pulseChart;
  while (chart.children.length < PULSE_MINUTES) {
    const bar = document.createElementNS(SVG, "rect");
    bar.setAttribute("width", "8");
    chart.appendChild(bar);
  }
  minutes.forEach(([minute, votes], index) => {
    const bar = chart.children[index];
    const height = votes ? Math.max(2, 96 * votes / peak) : 0.8;
    bar.setAttribute("x", String(index * 10 + 1));
    bar.setAttribute("y", String(100 - height));
    bar.setAttribute("height", String(height));
    bar.dataset.minute = String(minute);
    bar.dataset.votes = String(votes);
    bar.classList.toggle("now", index === PULSE_MINUTES - 1);
  });
  ui.pulse.dataset.total = String(total);
  ui.pulseTotal.textContent = loaded ? `${total} votes in 30 min` : "loading…";
  ui.pulsePeak.textContent = loaded ? `peak ${peak === 1 && total === 0 ? 0 : peak}/min` : "";
}
setInterval(() => { if (pulse.counts !== null) render(); }, 5000);  // a new minute

// -- the feed ---------------------------------------------------------------

const clock = new Intl.DateTimeFormat([], {
  hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"});
const feedByVote = new Map();  // vote id -> <li>, for merging a vote's changes

function clearFeed() {
  ui.feed.textContent = "";
  feedByVote.clear();
  ui.feedEmpty.hidden = false;
}

function describe(op, up) {
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
  part("event").textContent = live.event === "ALL" && change.event != null ? String(change.event) : "";
  part("action").textContent = describe(op, change.up);
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

showSelection();
render();
if (!SCREEN) loadEvents();
