'use strict';
// Load generator for bench/run.py: many socket.io-client connections in one
// Node process, driven by one-word commands on stdin, answering one JSON line
// per command on stdout. It exits when stdin closes, so it never outlives the
// orchestrator.
//
//   node loadgen.js config.json
//   config.json: {"url": "http://127.0.0.1:8000", "tokens": ["<jwt>", ...],
//                 "users": ["u1", ...], "clients": 250, "expectChars": 1200,
//                 "turnsPerConversation": 2}
//
//   connect  open every connection (connectConcurrency at a time)
//   run      every connection loops: chat:start, wait for chat:end, again
//   reset    zero the counters (start of a measurement window)
//   snap     report the counters (end of a measurement window)
//   drain    stop starting replies; answer when every reply has ended
//   quit     disconnect everything and exit
//   round    ("mode": "resume" only) one round of resumes, answered with its samples
//
// Counters: frames and characters of chat:message received, replies ended
// (complete = every character arrived), errors, disconnects, and a histogram
// of the gaps between consecutive chunks of one reply (1 ms buckets).
//
// With turnsPerConversation N > 1 a client continues its conversation (the
// conversationId of chat:end) for N turns before starting a new one, so the
// gateway loads history as it does for a user who replies.
//
// "followers": F (B6) gives every client F more sockets of the same user that
// `chat:join` each conversation it starts (and `chat:leave` the one before)
// and receive its replies as another tab would: the text so far as one
// chunk, then live. Their characters and frames count with everyone's; a
// follower's reply is complete when it holds every character, each chunk
// having arrived at the offset it names, and its text equals chat:end's
// content. `misplaced` counts chunks whose offset was not the length held.
//
// "mode": "resume" (B7): every client is a trio of sockets of one user. In a
// `round` the first starts a reply; once it holds `resumeAtChars`, a second
// `chat:resume`s at the length it holds (nothing missed: the baseline) and,
// after that is acknowledged, a third at offset 0 (all of it missed). Each
// resume is sent `RESUME_DELAY_MS` after a chunk of the reply arrived: the
// gateway sends every reply's frames on one beat, so both land at the same
// quiet point between beats rather than one of them on the beat. Each sample:
// emit-to-ack of both, emit-to-catch-up of the third (its first
// chat:message), how many frames it took to hold what the first held when it
// was sent, and whether all three ended with the saved text.
const { io } = require('socket.io-client');
const readline = require('node:readline');

const cfg = Object.assign(
  {
    clients: 1, connectConcurrency: 64, connectTimeoutMs: 20000, staggerMs: 1000, message: 'Say something long.',
    expectChars: 0, turnsPerConversation: 1, followers: 0, mode: 'loop', resumeAtChars: 10000, roundTimeoutMs: 30000,
  },
  JSON.parse(require('node:fs').readFileSync(process.argv[2], 'utf8')),
);
const HIST = 10001;
const RESUME_DELAY_MS = 10;
const clients = [];
let running = false;
let counters = fresh();

function fresh() {
  return {
    frames: 0, chars: 0, replies: 0, complete: 0, short: 0, errors: 0, disconnects: 0, codes: {},
    gaps: new Uint32Array(HIST), followerReplies: 0, followerComplete: 0, followerShort: 0, misplaced: 0,
  };
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

class Client {
  constructor(i) {
    this.token = cfg.tokens[i % cfg.tokens.length];
    this.user = cfg.users[i % cfg.users.length];
    this.busy = false;
    this.connected = false;
    this.got = 0;
    this.last = 0;
    this.turn = 0;
    this.conversationId = null;
  }

  async connect() {
    if (!(await this.open())) return false;
    for (const f of this.followers || []) if (!(await f.open())) return false;
    return true;
  }

  open() {
    return new Promise((resolve) => {
      const s = io(cfg.url + '/ai', {
        transports: ['websocket'], auth: { token: this.token }, reconnection: false,
        forceNew: true, timeout: cfg.connectTimeoutMs,
      });
      this.s = s;
      let settled = false;
      const settle = (ok) => { if (!settled) { settled = true; resolve(ok); } };
      s.on('connect', () => { this.connected = true; settle(true); });
      s.on('connect_error', () => { s.close(); settle(false); });
      s.on('disconnect', () => { if (this.connected) counters.disconnects++; this.connected = false; this.end(false); });
      s.on('chat:message', (m) => this.message(m));
      s.on('chat:end', (e) => { this.conversationId = (e && e.conversationId) || null; this.end(true, e); });
      s.on('chat:stopped', () => this.end(false));
      s.on('chat:error', (e) => { failure(e); this.end(false); });
    });
  }

  start() {
    if (!running || !this.connected) { this.busy = false; return; }
    this.busy = true;
    this.got = 0;
    this.last = 0;
    const payload = { message: cfg.message, userId: this.user };
    if (this.turn++ % cfg.turnsPerConversation && this.conversationId) payload.conversationId = this.conversationId;
    if (this.followers) this.s.emit('chat:start', payload, (ack) => this.started(ack));
    else this.s.emit('chat:start', payload);
  }

  started(ack) {
    // The followers join each new conversation as soon as it exists (the
    // start's ack), as a second tab opening it would; for the turns after,
    // they are in its room already.
    if (!ack || !ack.ok || ack.conversationId === this.joined) return;
    const previous = this.joined;
    this.joined = ack.conversationId;
    for (const f of this.followers) f.join(ack.conversationId, previous);
  }

  message(m) {
    const now = performance.now();
    const n = typeof m.content === 'string' ? m.content.length : 0;
    counters.frames++;
    counters.chars += n;
    this.got += n;
    if (this.last) {
      const gap = Math.round(now - this.last);
      counters.gaps[gap < HIST ? gap : HIST - 1]++;
    }
    this.last = now;
  }

  end(ok) {
    if (!this.busy) return;
    this.busy = false;
    counters.replies++;
    if (ok && (!cfg.expectChars || this.got === cfg.expectChars)) counters.complete++;
    else counters.short++;
    if (running) setImmediate(() => this.start());
    else maybeDrained();
  }
}

function failure(e) {
  counters.errors++;
  const code = String((e && (e.code || e.message)) || 'unknown').slice(0, 60);
  counters.codes[code] = (counters.codes[code] || 0) + 1;
}

// Another socket of a client's user, following its conversations (B6).
class Follower extends Client {
  constructor(i) {
    super(i);
    this.reply = null; // messageId of the reply being followed
    this.text = '';
  }

  join(conversationId, previous) {
    if (!this.connected) return;
    if (previous) this.s.emit('chat:leave', { conversationId: previous });
    this.s.emit('chat:join', { conversationId }, (ack) => { if (!ack || !ack.ok) failure(ack && ack.error); });
  }

  message(m) {
    if (m.messageId !== this.reply) {
      this.reply = m.messageId;
      this.busy = true;
      this.text = '';
      this.last = 0;
    }
    if (m.offset !== this.text.length) counters.misplaced++;
    super.message(m);
    this.text += m.content;
  }

  end(ok, e) {
    if (!this.busy) return;
    this.busy = false;
    this.reply = null;
    counters.followerReplies++;
    const whole = ok && e && e.content === this.text && (!cfg.expectChars || this.text.length === cfg.expectChars);
    if (whole) counters.followerComplete++;
    else counters.followerShort++;
    maybeDrained();
  }
}

// B7: a reply, and two sockets of its user that resume it once it holds resumeAtChars.
class Resumer extends Client {
  constructor(i) {
    super(i);
    this.base = new Client(i);
    this.late = new Client(i);
    this.trio = [this, this.base, this.late];
    this.done = null;
  }

  async connect() {
    for (const c of this.trio) {
      if (!(await c.open())) return false;
      c.message = (m) => this.heard(c, m);
      c.end = (ok, e) => this.ended(c, ok, e);
    }
    return true;
  }

  round() {
    return new Promise((resolve) => {
      this.done = resolve;
      this.sample = { held: 0, complete: false };
      for (const c of this.trio) Object.assign(c, { text: '', pos: 0, frames: 0, ok: false, over: false });
      // A gateway that never answers (no chat:resume at all, say) ends the
      // round as a failed sample rather than hanging it.
      this.timer = setTimeout(() => this.finish(), cfg.roundTimeoutMs);
      this.messageId = null;
      this.step = 0; // 1: baseline due, 2: baseline acknowledged, 3: late one sent
      this.s.emit('chat:start', { message: cfg.message, userId: this.user }, (ack) => {
        if (!ack || !ack.ok) { failure(ack && ack.error); this.finish(); return; }
        this.messageId = ack.messageId;
      });
    });
  }

  heard(c, m) {
    if (!this.done) return;
    const n = m.content.length;
    counters.frames++;
    counters.chars += n;
    if (m.offset !== c.pos) counters.misplaced++;
    c.pos += n;
    c.text += m.content;
    c.frames++;
    if (c === this.late) {
      if (this.sample.catchupMs === undefined) this.sample.catchupMs = performance.now() - this.t0;
      if (this.sample.catchupFrames === undefined && c.pos >= this.sample.held) this.sample.catchupFrames = c.frames;
    }
    if (c !== this || !this.messageId) return;
    if (this.step === 0 && c.pos >= cfg.resumeAtChars) {
      this.step = 1;
      setTimeout(() => this.resumeBaseline(), RESUME_DELAY_MS);
    } else if (this.step === 2) {
      this.step = 3;
      setTimeout(() => this.resumeLate(), RESUME_DELAY_MS);
    }
  }

  resumeBaseline() {
    const held = this.pos;
    this.base.pos = this.sample.baselineOffset = held;
    const t = performance.now();
    this.base.s.emit('chat:resume', { messageId: this.messageId, offset: held }, (ack) => {
      this.sample.baselineAckMs = performance.now() - t;
      if (!ack || !ack.ok) { failure(ack && ack.error); this.ended(this.base, false); }
      this.step = 2; // the late one goes after the next chunk
    });
  }

  resumeLate() {
    this.sample.held = this.pos;
    this.t0 = performance.now();
    this.late.s.emit('chat:resume', { messageId: this.messageId, offset: 0 }, (ack) => {
      this.sample.ackMs = performance.now() - this.t0;
      if (!ack || !ack.ok) { failure(ack && ack.error); this.ended(this.late, false); }
    });
  }

  ended(c, ok, e) {
    if (!this.done || c.over) return;
    c.over = true;
    // What each socket must end with: the whole saved reply for the starter
    // and the late resumer, the part after `held` for the baseline.
    const saved = e && typeof e.content === 'string' ? e.content : null;
    const want = saved !== null && c === this.base ? saved.slice(this.sample.baselineOffset) : saved;
    c.ok = ok && want !== null && c.text === want;
    if (c === this && this.step < 3) this.base.over = this.late.over = true; // too short to resume
    if (this.trio.every((x) => x.over)) this.finish();
  }

  finish() {
    if (!this.done) return;
    clearTimeout(this.timer);
    this.sample.complete = this.step === 3 && this.trio.every((x) => x.ok);
    counters.replies++;
    if (this.sample.complete) counters.complete++;
    else counters.short++;
    const done = this.done;
    this.done = null;
    done(this.sample);
  }
}

async function rounds() {
  const samples = await Promise.all(clients.map((c) => new Promise((resolve) => {
    setTimeout(() => c.round().then(resolve), Math.random() * cfg.staggerMs);
  })));
  out({ ev: 'round', samples });
}

async function connectAll() {
  const t0 = performance.now();
  for (let i = 0; i < cfg.clients; i++) {
    if (cfg.mode === 'resume') { clients.push(new Resumer(i)); continue; }
    const c = new Client(i);
    if (cfg.followers) c.followers = Array.from({ length: cfg.followers }, () => new Follower(i));
    clients.push(c);
  }
  let next = 0;
  let ok = 0;
  const worker = async () => {
    while (next < clients.length) {
      const c = clients[next++];
      if (await c.connect()) ok++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(cfg.connectConcurrency, clients.length) }, worker));
  out({ ev: 'connected', ok, failed: clients.length - ok, ms: performance.now() - t0 });
}

function runAll() {
  running = true;
  for (const c of clients) setTimeout(() => c.start(), Math.random() * cfg.staggerMs);
  out({ ev: 'running' });
}

let drainWaiter = null;
function maybeDrained() {
  const idle = (c) => !c.busy && (c.followers || []).every((f) => !f.busy);
  if (drainWaiter && clients.every(idle)) {
    clearTimeout(drainWaiter);
    drainWaiter = null;
    out({ ev: 'drained', ok: true });
  }
}

function drain() {
  running = false;
  drainWaiter = setTimeout(() => { drainWaiter = null; out({ ev: 'drained', ok: false }); }, 30000);
  maybeDrained();
}

function snap() {
  const open = clients.filter((c) => c.connected).length;
  const c = counters;
  out({ ev: 'snap', open, frames: c.frames, chars: c.chars, replies: c.replies, complete: c.complete,
        short: c.short, errors: c.errors, codes: c.codes, disconnects: c.disconnects, gaps: Array.from(c.gaps),
        followerReplies: c.followerReplies, followerComplete: c.followerComplete, followerShort: c.followerShort,
        misplaced: c.misplaced });
}

function quit() {
  running = false;
  for (const c of clients) {
    for (const x of [c, ...(c.followers || []), c.base, c.late]) if (x && x.s) x.s.close();
  }
  out({ ev: 'bye' });
  setTimeout(() => process.exit(0), 50);
}

const commands = {
  connect: connectAll, run: runAll, reset: () => { counters = fresh(); out({ ev: 'reset' }); }, snap, drain, quit,
  round: rounds,
};
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const command = commands[line.trim()];
  if (command) command();
  else out({ ev: 'error', message: `unknown command ${line.trim()}` });
});
rl.on('close', () => process.exit(0));
