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
//
// Counters: frames and characters of chat:message received, replies ended
// (complete = every character arrived), errors, disconnects, and a histogram
// of the gaps between consecutive chunks of one reply (1 ms buckets).
//
// With turnsPerConversation N > 1 a client continues its conversation (the
// conversationId of chat:end) for N turns before starting a new one, so the
// gateway loads history as it does for a user who replies.
const { io } = require('socket.io-client');
const readline = require('node:readline');

const cfg = Object.assign(
  { clients: 1, connectConcurrency: 64, connectTimeoutMs: 20000, staggerMs: 1000, message: 'Say something long.', expectChars: 0, turnsPerConversation: 1 },
  JSON.parse(require('node:fs').readFileSync(process.argv[2], 'utf8')),
);
const HIST = 10001;
const clients = [];
let running = false;
let counters = fresh();

function fresh() {
  return { frames: 0, chars: 0, replies: 0, complete: 0, short: 0, errors: 0, disconnects: 0, codes: {}, gaps: new Uint32Array(HIST) };
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

  connect() {
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
      s.on('chat:end', (e) => { this.conversationId = (e && e.conversationId) || null; this.end(true); });
      s.on('chat:stopped', () => this.end(false));
      s.on('chat:error', (e) => {
        counters.errors++;
        const code = String((e && (e.code || e.message)) || 'unknown').slice(0, 60);
        counters.codes[code] = (counters.codes[code] || 0) + 1;
        this.end(false);
      });
    });
  }

  start() {
    if (!running || !this.connected) { this.busy = false; return; }
    this.busy = true;
    this.got = 0;
    this.last = 0;
    const payload = { message: cfg.message, userId: this.user };
    if (this.turn++ % cfg.turnsPerConversation && this.conversationId) payload.conversationId = this.conversationId;
    this.s.emit('chat:start', payload);
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

async function connectAll() {
  const t0 = performance.now();
  for (let i = 0; i < cfg.clients; i++) clients.push(new Client(i));
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
  if (drainWaiter && clients.every((c) => !c.busy)) {
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
        short: c.short, errors: c.errors, codes: c.codes, disconnects: c.disconnects, gaps: Array.from(c.gaps) });
}

function quit() {
  running = false;
  for (const c of clients) if (c.s) c.s.close();
  out({ ev: 'bye' });
  setTimeout(() => process.exit(0), 50);
}

const commands = { connect: connectAll, run: runAll, reset: () => { counters = fresh(); out({ ev: 'reset' }); }, snap, drain, quit };
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const command = commands[line.trim()];
  if (command) command();
  else out({ ev: 'error', message: `unknown command ${line.trim()}` });
});
rl.on('close', () => process.exit(0));
