'use strict';
// B1's time-to-first-token probe with the official socket.io-client: the
// twin of bench/probe.py (python-socketio). One process alternates a request
// straight to the upstream (node:http, the SSE read until the first event
// whose delta has text) and a chat:start through the gateway (time to the
// first chat:message), each read to its end, so both paths pay the same
// client-side costs and the difference is what the gateway adds. Prints one
// JSON line: {"direct": [seconds...], "via": [seconds...]}.
//
//   node probe.js '{"gateway": "http://127.0.0.1:8000", "upstream": "http://127.0.0.1:9100/v1",
//                   "token": "<jwt>", "samples": 100, "warmup": 10, "maxTokens": 2}'
const { io } = require('socket.io-client');
const http = require('node:http');

const cfg = Object.assign({ samples: 100, warmup: 10, maxTokens: 2 }, JSON.parse(process.argv[2]));
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function direct() {
  const body = JSON.stringify({
    model: 'gpt-4', messages: [{ role: 'user', content: 'probe' }], max_tokens: cfg.maxTokens,
    stream: true, stream_options: { include_usage: true },
  });
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let first = 0;
    let buffer = '';
    const req = http.request(`${cfg.upstream}/chat/completions`, {
      method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
    }, (res) => {
      res.setEncoding('utf8');
      res.on('data', (text) => {
        if (first) return;
        buffer += text;
        const events = buffer.split('\n\n');
        buffer = events.pop();
        for (const event of events) {
          if (!event.startsWith('data: {')) continue;
          const chunk = JSON.parse(event.slice(6));
          if (chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content) {
            first = performance.now();
            break;
          }
        }
      });
      res.on('end', () => resolve((first - started) / 1000));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

function connect() {
  return new Promise((resolve, reject) => {
    const s = io(cfg.gateway + '/ai', { transports: ['websocket'], auth: { token: cfg.token }, reconnection: false, forceNew: true });
    s.on('connect', () => resolve(s));
    s.on('connect_error', reject);
  });
}

function via(s) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let first = 0;
    const timer = setTimeout(() => reject(new Error('no chat:end within 30 s')), 30000);
    const done = () => {
      clearTimeout(timer);
      s.off('chat:message', message);
      s.off('chat:end', done);
      s.off('chat:error', done);
      resolve(first ? (first - started) / 1000 : null);
    };
    const message = () => { if (!first) first = performance.now(); };
    s.on('chat:message', message);
    s.on('chat:end', done);
    s.on('chat:error', done);
    s.emit('chat:start', { message: 'probe', maxTokens: cfg.maxTokens });
  });
}

async function main() {
  const s = await connect();
  const d = [];
  const v = [];
  for (let i = 0; i < cfg.warmup + cfg.samples; i++) {
    // Alternate which path goes first so neither always gets the warmer caches.
    let a, b;
    if (i % 2) { a = await direct(); b = await via(s); } else { b = await via(s); a = await direct(); }
    if (i >= cfg.warmup) { d.push(a); v.push(b); }
  }
  s.close();
  agent.destroy();
  process.stdout.write(JSON.stringify({ direct: d, via: v }) + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
