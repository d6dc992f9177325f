// The pure functions of partysense/web/static/client.js under Node's own test
// runner (`node --test tests/js/*.test.mjs`): no browser, no daemon, no network.
//
// The module is loaded as an ES module from a data: URL of its own text, so
// Node needs no package.json "type" next to it (the file is served as it is).

import {test} from "node:test";
import assert from "node:assert/strict";
import {readFileSync} from "node:fs";

const source = readFileSync(new URL("../../partysense/web/static/client.js", import.meta.url),
                            "utf-8");
const client = await import(
  "data:text/javascript;base64," + Buffer.from(source).toString("base64"));
const {backoffDelay, applyChange, rank, SUBPROTOCOL, connect} = client;

test("the module exports what docs/client.md documents", () => {
  assert.equal(SUBPROTOCOL, "partysense.v2");
  assert.equal(typeof connect, "function");
});

test("backoff doubles from half a second, between half and all of its ceiling", () => {
  assert.equal(backoffDelay(0, () => 0), 250);
  assert.equal(backoffDelay(0, () => 1), 500);
  assert.equal(backoffDelay(1, () => 0), 500);
  assert.equal(backoffDelay(3, () => 0.5), 3000);  // ceiling 4 s: 2 s + 1 s
});

test("backoff is capped at 15 s, however many attempts", () => {
  for (const attempt of [5, 6, 10, 100, 10000]) {
    assert.equal(backoffDelay(attempt, () => 1), 15000);
    assert.equal(backoffDelay(attempt, () => 0), 7500);
  }
});

test("backoff with the real random stays within its bounds", () => {
  for (let n = 0; n < 1000; n += 1) {
    const delay = backoffDelay(2);
    assert.ok(delay >= 1000 && delay <= 2000, `${delay} outside [1000, 2000]`);
  }
});

function change(fields) {
  return {tid: 7, track: "Hush", artist: "Anna", op: "insert", up: true, prev: null, ...fields};
}

test("an insert adds one vote, making the track's row", () => {
  const tracks = new Map();
  const row = applyChange(tracks, change({}));
  assert.deepEqual(row, {tid: 7, track: "Hush", artist: "Anna", up: 1, down: 0});
  applyChange(tracks, change({up: false}));
  assert.deepEqual(tracks.get(7), {tid: 7, track: "Hush", artist: "Anna", up: 1, down: 1});
});

test("an update moves one vote, and changes nothing when its side is the same", () => {
  const tracks = new Map([[7, {tid: 7, track: "Hush", artist: "Anna", up: 2, down: 1}]]);
  applyChange(tracks, change({op: "update", prev: true, up: false}));
  assert.deepEqual([tracks.get(7).up, tracks.get(7).down], [1, 2]);
  applyChange(tracks, change({op: "update", prev: false, up: false}));
  assert.deepEqual([tracks.get(7).up, tracks.get(7).down], [1, 2]);
});

test("a delete removes one vote; a track left with none leaves the map", () => {
  const tracks = new Map([[7, {tid: 7, track: "Hush", artist: "Anna", up: 1, down: 1}]]);
  applyChange(tracks, change({op: "delete", up: true}));
  assert.deepEqual([tracks.get(7).up, tracks.get(7).down], [0, 1]);
  const row = applyChange(tracks, change({op: "delete", up: false}));
  assert.equal(tracks.has(7), false);
  assert.deepEqual([row.up, row.down], [0, 0]);  // returned with its zeros
});

test("a change takes the track's newest name and artist", () => {
  const tracks = new Map([[7, {tid: 7, track: "Old", artist: "Was", up: 1, down: 0}]]);
  applyChange(tracks, change({track: "New", artist: "Is"}));
  assert.equal(tracks.get(7).track, "New");
  assert.equal(tracks.get(7).artist, "Is");
});

test("a change without a track changes no tallies", () => {
  const tracks = new Map();
  assert.equal(applyChange(tracks, change({tid: null})), null);
  assert.equal(applyChange(tracks, change({tid: undefined})), null);
  assert.equal(tracks.size, 0);
});

test("an unknown op changes no tally", () => {
  const tracks = new Map([[7, {tid: 7, track: "Hush", artist: "Anna", up: 1, down: 0}]]);
  applyChange(tracks, change({op: "truncate"}));
  assert.deepEqual([tracks.get(7).up, tracks.get(7).down], [1, 0]);
});

function tallies(rows) {
  return new Map(rows.map(([tid, track, up, down]) => [tid, {tid, track, artist: null, up, down}]));
}

test("rank orders by net votes, then up votes, then name, then id", () => {
  const tracks = tallies([
    [1, "B", 1, 0],   // net 1, up 1
    [2, "A", 3, 2],   // net 1, up 3
    [3, "Z", 5, 0],   // net 5
    [4, "A", 1, 0],   // net 1, up 1, name A
    [5, "A", 1, 0],   // same as 4 but for its id
    [6, null, 1, 0],  // no name sorts as ""
    [7, "C", 0, 4],   // net -4
  ]);
  assert.deepEqual(rank(tracks).map((row) => row.tid), [3, 2, 6, 4, 5, 1, 7]);
});

test("rank does not change the map it reads", () => {
  const tracks = tallies([[1, "A", 0, 1], [2, "B", 1, 0]]);
  rank(tracks);
  assert.deepEqual(Array.from(tracks.keys()), [1, 2]);
});

test("rank of no tracks is empty", () => {
  assert.deepEqual(rank(new Map()), []);
});

// A WebSocket that the test drives: what the client sends is kept, what the
// daemon says is handed to the client's onmessage.
class FakeSocket {
  static OPEN = 1;
  static made = [];
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.made.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; }
  open() { this.readyState = FakeSocket.OPEN; this.onopen(); }
  say(body) { this.onmessage({data: JSON.stringify(body)}); }
}

test("a snapshot sent unasked with reset replaces the tallies; one without reset does not", () => {
  globalThis.WebSocket = FakeSocket;
  const resets = [];
  const live = connect({url: "ws://daemon.test/", event: 3,
                        onSnapshot: (_, how) => resets.push(how.reset)});
  try {
    const socket = FakeSocket.made.at(-1);
    socket.open();
    const subscribe = socket.sent.find((body) => body.type === "subscribe");
    const track = (up) => [{tid: 7, track: "Song", artist: "Artist", up, down: 0}];
    socket.say({type: "snapshot", event: 3, id: subscribe.id, cursor: 10, title: "Friday",
                tracks: track(1)});
    socket.say({type: "change", sub: 3, eid: 3, seq: 11, op: "insert", tid: 7, up: true,
                track: "Song", artist: "Artist"});
    assert.equal(live.tracks.get(7).up, 2);
    socket.say({type: "snapshot", event: 3, cursor: 20, title: "Friday", tracks: track(5)});
    assert.equal(live.tracks.get(7).up, 2, "unasked without reset: not ours");
    socket.say({type: "snapshot", event: 4, cursor: 20, reset: true, tracks: track(9)});
    assert.equal(live.tracks.get(7).up, 2, "another event's: not ours");
    socket.say({type: "snapshot", event: 3, cursor: 20, reset: true, title: "Friday",
                tracks: track(5)});
    assert.equal(live.tracks.get(7).up, 5);
    assert.equal(live.cursor, 20);
    assert.deepEqual(resets, [false, true]);
    socket.say({type: "change", sub: 3, eid: 3, seq: 21, op: "insert", tid: 7, up: true,
                track: "Song", artist: "Artist"});
    assert.equal(live.tracks.get(7).up, 6);
  } finally {
    live.close();
    delete globalThis.WebSocket;
  }
});
