// The official socket.io-client v4 against a running tokenwire, for tests/interop/test_js_client.py.
//
//   node tests/interop/client.mjs SCENARIO URL
//
// The namespace URL (http://127.0.0.1:PORT/ai) and the scenario come as
// arguments; everything else as environment variables, so tokens never show
// in a process listing:
//
//   INTEROP_TOKEN        auth.token to connect with; unset: no `auth` option at all
//   INTEROP_FRESH_TOKEN  the token the `auth` scenario refreshes to
//   INTEROP_TRANSPORTS   comma-separated `transports`; unset: the client's default
//                        (HTTP long-polling first, then upgrade to WebSocket)
//   INTEROP_ORIGIN       sent as the Origin header (`extraHeaders`)
//   INTEROP_USER         the userId sent with chat:start
//   INTEROP_MESSAGE      the message sent with chat:start
//   INTEROP_RETRIES      the `retries` option (with ackTimeout 10000), as the guide's Buffering
//   INTEROP_LINGER       1: after the scenario, wait for Node to exit by itself
//   INTEROP_CONVERSATION the conversationId the `join` scenario joins
//   INTEROP_MESSAGE_ID   the messageId `resume` resumes and `stop-id` stops
//   INTEROP_OFFSET       the offset `resume` resumes at
//
// Each line on stdout is one JSON object, {"event": name, "data": ...}: every
// event the server sent (through `onAny`), plus what the client itself saw,
// named with a leading underscore: _connect, _connect_error, _disconnect,
// _ack, _text, _transport, _upgrade, _error, then _done or _failed, and _exit.
// The script exits by itself: 0 when its scenario ran to the end, 1 on a
// failure or at its own time limit (INTEROP_TIMEOUT_MS, default 15000).

import { io } from 'socket.io-client';

const [scenario, url] = process.argv.slice(2);
const env = process.env;
const token = env.INTEROP_TOKEN;
const transports = env.INTEROP_TRANSPORTS ? env.INTEROP_TRANSPORTS.split(',') : undefined;
const userId = env.INTEROP_USER ?? 'alice';
const message = env.INTEROP_MESSAGE ?? 'Say hello';
const timeoutMs = Number(env.INTEROP_TIMEOUT_MS ?? 15000);
const linger = env.INTEROP_LINGER === '1';
const EXIT_GRACE_MS = 100;

function out(event, data = null) {
  process.stdout.write(`${JSON.stringify({ event, data })}\n`);
}

let socket;
let doneAt = null;

function finish() {
  socket.disconnect();
  doneAt = performance.now();
  out('_done');
  if (!linger) {
    // Over polling a long-poll GET is always in flight, and the server does
    // not answer it when we close (test_polling_disconnect_answers_the_pending_poll):
    // let the close packet go out, then leave without waiting for the GET.
    setTimeout(() => process.exit(0), EXIT_GRACE_MS).unref();
  }
}

function fail(error) {
  out('_error', { message: String(error?.message ?? error), stack: error?.stack ?? null });
  out('_failed');
  socket?.disconnect();
  process.stdout.write('', () => process.exit(1));
}

// With INTEROP_LINGER=1 Node exits only once nothing is left open: how long
// that took after the disconnect shows whether the server let go of us.
process.on('exit', (code) => {
  if (doneAt !== null) out('_exit', { code, afterDoneMs: Math.round(performance.now() - doneAt) });
});

const watchdog = setTimeout(() => fail(new Error(`scenario '${scenario}' timed out`)), timeoutMs);
watchdog.unref();

const options = { reconnection: false };
if (env.INTEROP_RECONNECT === '1') {
  // The recovery scenarios: socket.io-client reconnects by itself, quickly.
  Object.assign(options, { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 200 });
}
if (token !== undefined) options.auth = { token };
if (transports) options.transports = transports;
if (env.INTEROP_ORIGIN) options.extraHeaders = { Origin: env.INTEROP_ORIGIN };
if (env.INTEROP_RETRIES) {
  // The guide's "Buffering": every emit then expects an ack, and is sent again without one.
  options.ackTimeout = 10000;
  options.retries = Number(env.INTEROP_RETRIES);
}

socket = io(url, options);

// --- recording

const received = []; // [name, data] of every server event, in order
const waiters = [];

socket.onAny((name, ...args) => {
  // With connection state recovery each event's last argument is its offset (a string).
  if (args.length === 2 && typeof args[1] === 'string') args = args.slice(0, 1);
  const data = args.length <= 1 ? (args[0] ?? null) : args;
  received.push([name, data]);
  out(name, data);
  for (const waiter of waiters.splice(0)) waiter();
});

/** The first `name` event at or after index `from` of `received`. */
function nextEvent(name, from = 0) {
  return new Promise((resolve) => {
    const look = () => {
      const index = received.findIndex(([n], i) => i >= from && n === name);
      if (index >= 0) resolve({ index, data: received[index][1] });
      else waiters.push(look);
    };
    look();
  });
}

function transportName() {
  return socket.io.engine?.transport?.name ?? null;
}

socket.io.on('open', () => {
  socket.io.engine.on('upgrade', (transport) => out('_upgrade', { name: transport.name }));
});
socket.on('connect', () => out('_connect', { id: socket.id, transport: transportName() }));
socket.on('disconnect', (reason) => out('_disconnect', { reason }));
socket.on('connect_error', (err) =>
  out('_connect_error', {
    message: err.message,
    data: err.data ?? null,
    description: describe(err.description),
    type: err.type ?? null,
  }),
);

function describe(value) {
  if (value === undefined || value === null) return null;
  if (typeof value === 'number' || typeof value === 'string') return value;
  return String(value.message ?? value);
}

const connected = () =>
  socket.connected ? Promise.resolve() : new Promise((resolve) => socket.once('connect', resolve));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Wait (up to `ms`) for the engine to settle on WebSocket, then report the transport in use. */
async function reportTransport(ms = 3000) {
  const until = Date.now() + ms;
  while (transports === undefined && transportName() !== 'websocket' && Date.now() < until) {
    await sleep(20);
  }
  out('_transport', { name: transportName() });
}

async function ack(label, ...args) {
  const value = await socket.emitWithAck(...args);
  out('_ack', { for: label, value });
  return value;
}

/**
 * What a browser holds of a reply followed from `start`: each chunk is put at its
 * offset; `misplaced` counts chunks whose offset was not the text's length.
 */
function followText(start) {
  let text = '';
  let misplaced = 0;
  socket.on('chat:message', (chunk) => {
    if (chunk.offset !== start + text.length) misplaced += 1;
    text = text.slice(0, Math.max(0, chunk.offset - start)) + chunk.content;
  });
  return () => ({ text, length: text.length, misplaced });
}

// --- scenarios

const scenarios = {
  /** The guide's flow: chat:start as soon as connected, then everything up to chat:end. */
  async flow() {
    // What a browser would check before appending: offset === text.length.
    let text = '';
    const before = [];
    socket.on('chat:message', (chunk) => {
      before.push(text.length);
      text += chunk.content;
    });
    await connected();
    // The guide's React component's payload, conversationId still null.
    socket.emit('chat:start', {
      userId,
      message,
      conversationId: null,
      model: 'gpt-4',
      maxTokens: 4096,
      temperature: 0.7,
    });
    await nextEvent('chat:end');
    out('_text', { text, length: text.length, before });
    await reportTransport();
  },

  /** emitWithAck for a good chat:start, then for a bad one. */
  async acks() {
    await connected();
    await ack('start', 'chat:start', { userId, message });
    await nextEvent('chat:end');
    const mark = received.length;
    await ack('bad', 'chat:start', { message: 42 });
    await nextEvent('chat:error', mark);
    await reportTransport();
  },

  /** chat:stop after the first chunks of a long reply; nothing may follow chat:stopped. */
  async stop() {
    await connected();
    socket.emit('chat:start', { userId, message });
    await nextEvent('chat:message');
    await sleep(100);
    await ack('stop', 'chat:stop');
    await nextEvent('chat:stopped');
    await sleep(300);
    await reportTransport();
  },

  /** chat:join, then everything up to the reply's end; the text assembled at each offset. */
  async join() {
    const follow = followText(0);
    await connected();
    await ack('join', 'chat:join', { conversationId: env.INTEROP_CONVERSATION });
    await Promise.race([nextEvent('chat:end'), nextEvent('chat:stopped')]);
    out('_text', follow());
  },

  /** A reload: chat:resume {messageId, offset} from a new socket, up to the reply's end. */
  async resume() {
    const offset = Number(env.INTEROP_OFFSET);
    const follow = followText(offset);
    await connected();
    await ack('resume', 'chat:resume', { messageId: env.INTEROP_MESSAGE_ID, offset });
    await Promise.race([nextEvent('chat:end'), nextEvent('chat:stopped')]);
    out('_text', follow());
  },

  /** Another tab's Stop: chat:stop {messageId}. */
  async 'stop-id'() {
    await connected();
    await ack('stop', 'chat:stop', { messageId: env.INTEROP_MESSAGE_ID });
  },

  /** A refused connection, then the guide's refresh-and-reconnect. */
  async auth() {
    let refreshed = false;
    socket.on('connect_error', (error) => {
      if (error.message === 'unauthorized' && !refreshed) {
        refreshed = true;
        // The guide: socket.auth.token = newToken; socket.connect();
        socket.auth ??= {};
        socket.auth.token = env.INTEROP_FRESH_TOKEN;
        socket.connect();
      }
    });
    await connected();
    await ack('stop', 'chat:stop');
  },

  /**
   * Connection state recovery: start a long reply and keep reading while the
   * test cuts the connection (INTEROP_RECONNECT=1); socket.io-client
   * reconnects with its pid and offset. Reports whether the session came
   * back (`socket.recovered`, the same id) and the text the guide's
   * component would hold: every chunk's content appended, as it arrives.
   */
  async recover() {
    let text = '';
    const before = [];
    socket.on('chat:message', (chunk) => {
      before.push(text.length);
      text += chunk.content;
    });
    const connects = [];
    socket.on('connect', () => connects.push({ id: socket.id, recovered: socket.recovered }));
    await connected();
    socket.emit('chat:start', { userId, message });
    if (env.INTEROP_CUT === 'engine') {
      // socket.io's own way to test it: close the Engine.IO connection.
      await nextEvent('chat:message');
      await sleep(200);
      socket.io.engine.close();
    }
    await nextEvent('chat:end');
    out('_text', { text, length: text.length, before });
    out('_connects', connects);
  },

  /** Connect or be refused; with reconnection off, the first outcome is the only one. */
  async connect() {
    const outcome = await new Promise((resolve) => {
      socket.once('connect', () => resolve('connected'));
      socket.once('connect_error', () => resolve('refused'));
    });
    if (outcome === 'connected') await ack('stop', 'chat:stop');
  },
};

const run = scenarios[scenario];
if (run === undefined) {
  fail(new Error(`unknown scenario '${scenario}'`));
} else {
  run().then(finish, fail);
}
