// The benchmark's WebSocket load generator: N seed clients (and S stalled ones)
// against one service, counting and timing every frame. With "mode": "sse" the
// clients are Server-Sent Events streams (GET /events/<id>/stream) instead.
//
// Why raw sockets and not the `ws` package: the receiving side must not be the
// bottleneck. `ws` tops out near 50-60 k frames/s per process on the benchmark
// machine; this client parses server frames (never masked, never compressed)
// straight off the socket and only looks for the vote id, which costs a few
// times less. No npm install needed either.
//
// Driven by bench/run.py over stdin/stdout, one JSON object per line:
//   argv[2]: the config (JSON), see `defaults` below
//   <- {"type": "connected", "open": n, "failed": n, "stalled": n, ...}  once connected
//   -> {"cmd": "status"}            <- {"type": "status", "warm": n, ...}
//   -> {"cmd": "measure", "first": vote_id, "last": vote_id}
//   -> {"cmd": "finish", "votes": "/path/votes.json", "settleMs": 3000, "maxWaitMs": 30000}
//   <- {"type": "result", ...}      then the process exits
// The storm (bench/storm.py) adds:
//   config "v2": [0|1 per subscription] (1: a partysense.v2 client, which is
//     ready at its snapshot; a seed client is ready at its first frame),
//   config "waitForGo": true: connect nobody until -> {"cmd": "go"}
//   -> {"cmd": "ready"}             <- {"type": "ready", "ready": n, "readyNs": [...], ...}
// Times are CLOCK_MONOTONIC nanoseconds (process.hrtime), the same clock as
// Python's time.monotonic_ns(), so the generator's t0 and our arrival compare.
'use strict';

const net = require('net');
const crypto = require('crypto');
const fs = require('fs');
const readline = require('readline');

const defaults = {
  host: '127.0.0.1',
  port: 18854,
  path: '/',
  subscriptions: [],        // one per fast client: an event id or "ALL"
  stalled: [],              // one per stalled client: an event id or "ALL"
  sourceAddresses: ['127.0.0.1'],
  concurrency: 256,         // handshakes in flight at once
  handshakeTimeoutMs: 15000,
  connectDeadlineMs: 120000,
  v2: [],                   // per subscription: 1 for a partysense.v2 client
  waitForGo: false,
  mode: 'websocket',        // or 'sse': GET /events/<id>/stream, one event per change
};
const config = Object.assign({}, defaults, JSON.parse(process.argv[2] || '{}'));

const now = () => Number(process.hrtime.bigint());
const emit = (message) => process.stdout.write(JSON.stringify(message) + '\n');

// -- the frames we received, in chunked typed arrays ------------------------
const CHUNK = 1 << 20;
const records = [];  // {client: Int32Array, vote: Int32Array, at: Float64Array}
let recordCount = 0;
let framesTotal = 0;
let measuredFrames = 0;
let measureFirst = Infinity;
let measureLast = -Infinity;
let lastFrameAt = 0;

function record(client, vote, at) {
  const slot = recordCount % CHUNK;
  if (slot === 0) {
    records.push({client: new Int32Array(CHUNK), vote: new Int32Array(CHUNK),
                  at: new Float64Array(CHUNK)});
  }
  const chunk = records[records.length - 1];
  chunk.client[slot] = client;
  chunk.vote[slot] = vote;
  chunk.at[slot] = at;
  recordCount++;
}

// The vote id of a change: the digits after `"vote"` (the key json_build_object wrote).
const VOTE_KEY = Buffer.from('"vote"');
function voteId(payload) {
  let i = payload.indexOf(VOTE_KEY);
  if (i < 0) return -1;
  i += VOTE_KEY.length;
  while (i < payload.length && (payload[i] === 0x20 || payload[i] === 0x3a)) i++;
  let value = 0;
  let digits = 0;
  for (; i < payload.length; i++) {
    const c = payload[i];
    if (c < 0x30 || c > 0x39) break;
    value = value * 10 + (c - 0x30);
    digits++;
  }
  return digits ? value : -1;
}

// -- client frames (masked, as RFC 6455 requires of clients) ----------------
function clientFrame(opcode, payload) {
  const mask = crypto.randomBytes(4);
  const length = payload.length;
  const header = length < 126 ? 2 : 4;
  const frame = Buffer.alloc(header + 4 + length);
  frame[0] = 0x80 | opcode;
  if (length < 126) {
    frame[1] = 0x80 | length;
  } else {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(length, 2);
  }
  mask.copy(frame, header);
  for (let i = 0; i < length; i++) frame[header + 4 + i] = payload[i] ^ mask[i & 3];
  return frame;
}

// -- Server-Sent Events: HTTP/1.1 chunks undone, then events split on a blank line --
// Only `event: change` blocks count as frames; comments and the opening
// `retry:`/`id:` block carry no vote. The vote id is found as in a WebSocket
// frame: the data is the same JSON.
const CHANGE = Buffer.from('event: change\n');
class SseBody {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.raw = null;     // undecoded bytes
    this.left = 0;       // bytes of the current chunk still to come; -1: its CRLF
    this.text = null;    // decoded bytes not yet ending in a blank line
  }

  feed(data) {
    let raw = this.raw ? Buffer.concat([this.raw, data]) : data;
    let offset = 0;
    const parts = [];
    while (offset < raw.length) {
      if (this.left > 0) {
        const take = Math.min(this.left, raw.length - offset);
        parts.push(raw.subarray(offset, offset + take));
        offset += take;
        this.left -= take;
        if (this.left === 0) this.left = -1;
      } else if (this.left < 0) {
        if (raw.length - offset < 2) break;
        offset += 2;
        this.left = 0;
      } else {
        const end = raw.indexOf('\r\n', offset);
        if (end < 0) break;
        this.left = parseInt(raw.toString('latin1', offset, end), 16);
        offset = end + 2;
        if (this.left === 0) { offset = raw.length; break; }  // the last chunk
      }
    }
    this.raw = offset < raw.length ? Buffer.from(raw.subarray(offset)) : null;
    if (!parts.length) return;
    let text = this.text ? Buffer.concat([this.text, ...parts]) : Buffer.concat(parts);
    let start = 0;
    for (;;) {
      const end = text.indexOf('\n\n', start);
      if (end < 0) break;
      const block = text.subarray(start, end + 1);
      if (block.indexOf(CHANGE) >= 0) this.onEvent(block);
      start = end + 2;
    }
    this.text = start < text.length ? Buffer.from(text.subarray(start)) : null;
  }
}

// -- one connection ---------------------------------------------------------
const clients = [];
const stats = {open: 0, failed: 0, dropped: 0, failures: {}, dropCodes: {}};

function countInto(table, key) { table[key] = (table[key] || 0) + 1; }

// The daemon writes JSON with or without a space after the colon.
const SNAPSHOTS = [Buffer.from('"type":"snapshot"'), Buffer.from('"type": "snapshot"')];
let startedNs = 0;         // when the first connection was started
let readyCount = 0;
let readySeed = 0;

class Client {
  constructor(index, subscription, sourceAddress, stalled, v2) {
    this.index = index;
    this.subscription = subscription;
    this.stalled = stalled;
    this.v2 = v2;
    this.readyAt = 0;       // seed: its first frame; v2: its snapshot
    this.openAt = 0;
    this.state = 'connecting';
    this.frames = 0;
    this.closeCode = null;
    this.buffer = null;
    this.fragments = null;
    this.socket = net.connect({host: config.host, port: config.port,
                               localAddress: sourceAddress});
    this.socket.setNoDelay(true);
    this.key = crypto.randomBytes(16).toString('base64');
    this.done = null;
    this.opened = new Promise((resolve) => { this.done = resolve; });
    this.timer = setTimeout(() => this.fail('handshake timeout'), config.handshakeTimeoutMs);
    this.sse = config.mode === 'sse' ? new SseBody((block) => this.onChange(block, now())) : null;
    this.socket.on('connect', () => this.socket.write(this.sse
      ? `GET /events/${subscription}/stream HTTP/1.1\r\nHost: ${config.host}:${config.port}\r\n` +
        'Accept: text/event-stream\r\n\r\n'
      : `GET ${config.path} HTTP/1.1\r\nHost: ${config.host}:${config.port}\r\n` +
        'Upgrade: websocket\r\nConnection: Upgrade\r\n' +
        (this.v2 ? 'Sec-WebSocket-Protocol: partysense.v2\r\n' : '') +
        `Sec-WebSocket-Key: ${this.key}\r\nSec-WebSocket-Version: 13\r\n\r\n`));
    this.socket.on('data', (data) => this.onData(data));
    this.socket.on('error', (error) => this.lost(error.code || String(error)));
    this.socket.on('close', () => this.lost('socket closed'));
  }

  fail(why) {
    if (this.state !== 'connecting') return;
    this.state = 'failed';
    stats.failed++;
    countInto(stats.failures, why);
    clearTimeout(this.timer);
    this.socket.destroy();
    this.done();
  }

  lost(why) {
    if (this.state === 'connecting') { this.fail(why); return; }
    if (this.state !== 'open') return;
    this.state = 'dropped';
    if (!this.stalled) {
      stats.dropped++;
      countInto(stats.dropCodes, this.closeCode === null ? why : String(this.closeCode));
    }
  }

  onData(data) {
    if (this.state === 'connecting') {
      this.buffer = this.buffer ? Buffer.concat([this.buffer, data]) : data;
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = this.buffer.subarray(0, end).toString('latin1');
      const rest = this.buffer.subarray(end + 4);
      this.buffer = null;
      const accept = crypto.createHash('sha1')
        .update(this.key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
      const refused = this.sse ? !head.startsWith('HTTP/1.1 200')
        : !head.startsWith('HTTP/1.1 101') || !head.includes(accept);
      if (refused) {
        this.fail('handshake refused: ' + head.split('\r\n')[0]);
        return;
      }
      clearTimeout(this.timer);
      this.state = 'open';
      this.openAt = now();
      if (!this.stalled) stats.open++;
      if (!this.sse) {
        const request = this.v2 ? {type: 'subscribe', event: this.subscription}
                                : {event: this.subscription};
        this.socket.write(clientFrame(1, Buffer.from(JSON.stringify(request))));
      }
      if (this.stalled) this.socket.pause();  // connected, subscribed, never reading
      this.done();
      if (rest.length) this.onData(rest);
      return;
    }
    if (this.sse) {
      this.sse.feed(data);
      return;
    }
    let buffer = this.buffer ? Buffer.concat([this.buffer, data]) : data;
    let offset = 0;
    const at = now();
    while (buffer.length - offset >= 2) {
      const first = buffer[offset];
      let length = buffer[offset + 1] & 0x7f;
      let header = 2;
      if (length === 126) {
        if (buffer.length - offset < 4) break;
        length = buffer.readUInt16BE(offset + 2);
        header = 4;
      } else if (length === 127) {
        if (buffer.length - offset < 10) break;
        length = Number(buffer.readBigUInt64BE(offset + 2));
        header = 10;
      }
      if (buffer.length - offset < header + length) break;
      const payload = buffer.subarray(offset + header, offset + header + length);
      offset += header + length;
      this.onFrame(first & 0x80, first & 0x0f, payload, at);
    }
    this.buffer = offset < buffer.length ? Buffer.from(buffer.subarray(offset)) : null;
  }

  onChange(payload, at) {
    this.frames++;
    framesTotal++;
    lastFrameAt = at;
    if (this.stalled) return;
    const vote = voteId(payload);
    record(this.index, vote, at);
    if (vote >= measureFirst && vote <= measureLast) measuredFrames++;
  }

  onFrame(fin, opcode, payload, at) {
    if (opcode === 0 || (opcode === 1 && !fin)) {  // a fragmented message
      this.fragments = this.fragments ? Buffer.concat([this.fragments, payload])
                                      : Buffer.from(payload);
      if (!fin) return;
      payload = this.fragments;
      this.fragments = null;
      opcode = 1;
    }
    if (opcode === 1) {
      if (!this.readyAt && (!this.v2 || SNAPSHOTS.some((s) => payload.indexOf(s) >= 0))) {
        this.readyAt = at;
        readyCount++;
        if (!this.v2) readySeed++;
      }
      this.onChange(payload, at);
    } else if (opcode === 8) {
      this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      if (this.state === 'open') this.socket.end(clientFrame(8, payload.subarray(0, 2)));
      this.lost('close');
    } else if (opcode === 9) {
      this.socket.write(clientFrame(10, payload));
    }
  }
}

async function connectAll() {
  const started = now();
  startedNs = started;
  const deadline = Date.now() + config.connectDeadlineMs;
  const plan = config.subscriptions.map((s) => [s, false])
    .concat(config.stalled.map((s) => [s, true]));
  let next = 0;
  async function worker() {
    while (next < plan.length && Date.now() < deadline) {
      const index = next++;
      const [subscription, stalled] = plan[index];
      const source = config.sourceAddresses[index % config.sourceAddresses.length];
      const client = new Client(index, subscription, source, stalled,
                                !stalled && Boolean(config.v2[index]));
      clients.push(client);
      await client.opened;
    }
  }
  const workers = [];
  for (let i = 0; i < Math.min(config.concurrency, plan.length); i++) workers.push(worker());
  await Promise.all(workers);
  stats.failed += plan.length - clients.length;  // never tried: past the deadline
  emit({type: 'connected', open: stats.open, failed: stats.failed,
        stalled: clients.filter((c) => c.stalled && c.state === 'open').length,
        failures: stats.failures, seconds: (now() - started) / 1e9});
}

// The storm's verdict so far: who is ready, and when (ns after startedNs).
function ready() {
  const fast = clients.filter((c) => !c.stalled);
  const times = (v2) => fast.filter((c) => c.readyAt && c.v2 === v2)
    .map((c) => c.readyAt - startedNs);
  return {type: 'ready', startedNs, clients: config.subscriptions.length,
          open: stats.open, failed: stats.failed, dropped: stats.dropped,
          failures: stats.failures, dropCodes: stats.dropCodes, ready: readyCount,
          seedReadyNs: times(false), v2ReadyNs: times(true), frames: framesTotal,
          v2WaitNs: fast.filter((c) => c.readyAt && c.v2).map((c) => c.readyAt - c.openAt),
          openNs: fast.filter((c) => c.openAt).map((c) => c.openAt - startedNs)};
}

function status() {
  const fast = clients.filter((c) => !c.stalled);
  return {type: 'status', open: fast.filter((c) => c.state === 'open').length,
          warm: fast.filter((c) => c.state === 'open' && c.frames > 0).length,
          dropped: stats.dropped, frames: framesTotal, measuredFrames};
}

// -- the verdict: expected, delivered, lost, duplicated, latency ------------
const BUCKET = Math.log(1.01);  // 1 % wide latency buckets from 1 microsecond

function analyse(votes) {
  const index = new Map();
  const perEvent = new Map();
  let firstId = Infinity;
  votes.forEach(([id, event], i) => {
    index.set(id, i);
    perEvent.set(event, (perEvent.get(event) || 0) + 1);
    firstId = Math.min(firstId, id);
  });
  const bitmaps = new Map();
  const fast = clients.filter((c) => !c.stalled && c.state !== 'failed');
  let expected = 0;
  for (const c of fast) {
    expected += c.subscription === 'ALL' ? votes.length : (perEvent.get(c.subscription) || 0);
    bitmaps.set(c.index, new Uint8Array(Math.ceil(votes.length / 8)));
  }
  const subscriptionOf = new Map(fast.map((c) => [c.index, c.subscription]));
  const histogram = {};
  let delivered = 0, duplicated = 0, unexpected = 0, earlier = 0;
  let latencyMax = 0, latencySum = 0, firstArrival = Infinity, lastArrival = 0;
  for (let n = 0; n < recordCount; n++) {
    const chunk = records[Math.floor(n / CHUNK)];
    const slot = n % CHUNK;
    const client = chunk.client[slot];
    const i = index.get(chunk.vote[slot]);
    if (i === undefined) {
      if (chunk.vote[slot] >= 0 && chunk.vote[slot] < firstId) earlier++; else unexpected++;
      continue;
    }
    const [, event, t0] = votes[i];
    const subscription = subscriptionOf.get(client);
    if (subscription !== 'ALL' && subscription !== event) { unexpected++; continue; }
    const bitmap = bitmaps.get(client);
    if (bitmap[i >> 3] & (1 << (i & 7))) { duplicated++; continue; }
    bitmap[i >> 3] |= 1 << (i & 7);
    delivered++;
    const at = chunk.at[slot];
    const latency = Math.max(at - t0, 1000);
    const bucket = Math.floor(Math.log(latency / 1000) / BUCKET);
    histogram[bucket] = (histogram[bucket] || 0) + 1;
    latencyMax = Math.max(latencyMax, latency);
    latencySum += latency;
    firstArrival = Math.min(firstArrival, at);
    lastArrival = Math.max(lastArrival, at);
  }
  return {expected, delivered, lost: expected - delivered, duplicated, unexpected,
          warmupFrames: earlier, histogram, bucketRatio: 1.01, latencyMaxNs: latencyMax,
          latencySumNs: latencySum, firstArrivalNs: firstArrival, lastArrivalNs: lastArrival};
}

function expectedTotal(votes) {
  const perEvent = new Map();
  for (const [, event] of votes) perEvent.set(event, (perEvent.get(event) || 0) + 1);
  let total = 0;
  for (const c of clients) {
    if (c.stalled || c.state === 'failed') continue;
    total += c.subscription === 'ALL' ? votes.length : (perEvent.get(c.subscription) || 0);
  }
  return total;
}

// Resume the stalled clients and see whether the server closed them (and how).
async function stalledVerdict(waitMs) {
  const stalled = clients.filter((c) => c.stalled && c.state !== 'failed');
  for (const c of stalled) c.socket.resume();
  const until = Date.now() + waitMs;
  while (Date.now() < until && stalled.some((c) => c.state === 'open' && c.closeCode === null)) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const codes = {};
  for (const c of stalled) {
    if (c.closeCode !== null) countInto(codes, String(c.closeCode));
    else if (c.state === 'dropped') countInto(codes, 'socket closed');
  }
  return {count: stalled.length, stillOpen: stalled.filter((c) => c.state === 'open' &&
          c.closeCode === null).length, closeCodes: codes,
          framesAfterResume: stalled.reduce((sum, c) => sum + c.frames, 0)};
}

async function finish(command) {
  const votes = JSON.parse(fs.readFileSync(command.votes, 'utf8')).votes;
  const wanted = expectedTotal(votes);
  const settle = command.settleMs || 3000;
  const until = Date.now() + (command.maxWaitMs || 30000);
  // Done when every expected frame came, or nothing came for `settle` ms.
  while (Date.now() < until && measuredFrames < wanted &&
         (now() - lastFrameAt) / 1e6 < settle) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  if (measuredFrames >= wanted) await new Promise((resolve) => setTimeout(resolve, 200));
  const fast = clients.filter((c) => !c.stalled);
  const result = Object.assign({type: 'result', clients: fast.length,
                                open: fast.filter((c) => c.state === 'open').length,
                                failed: stats.failed, dropped: stats.dropped,
                                failures: stats.failures, dropCodes: stats.dropCodes},
                               analyse(votes));
  result.stalled = await stalledVerdict(command.stalledWaitMs || 2000);
  emit(result);
  for (const c of clients) c.socket.destroy();
  setTimeout(() => process.exit(0), 100);
}

readline.createInterface({input: process.stdin}).on('line', (line) => {
  const command = JSON.parse(line);
  if (command.cmd === 'status') {
    emit(status());
  } else if (command.cmd === 'go') {
    go();
  } else if (command.cmd === 'ready') {
    emit(ready());
  } else if (command.cmd === 'frames') {
    emit({type: 'frames', frames: framesTotal, ready: readyCount, readySeed, open: stats.open,
          failed: stats.failed, dropped: stats.dropped});
  } else if (command.cmd === 'measure') {
    measureFirst = command.first;
    measureLast = command.last;
  } else if (command.cmd === 'finish') {
    finish(command).catch((error) => { emit({type: 'error', error: String(error)}); process.exit(1); });
  }
}).on('close', () => process.exit(0));

function go() {
  connectAll().catch((error) => { emit({type: 'error', error: String(error)}); process.exit(1); });
}
if (!config.waitForGo) go();
