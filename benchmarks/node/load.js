// The bench's one load generator: every connection in this one process (`ws` clients).
//
//   node load.js '<JSON config>'   prints one JSON line of figures on stdout
//
// Config: {scenario: "burst"|"rate"|"poll", proto: "plain"|"live"|"sio",
//   servers: [{url, control}] (clients go round robin over them; the publishes go to the
//   first one's control URL), pids: [pid...] (whose CPU and RSS are read from /proc),
//   clk_tck, clients, events (burst), rate and seconds (rate, poll), period (poll, ms),
//   timeout (s), stall (ms without a delivery that ends a wait), concurrency (handshakes
//   in flight)}.
//
// Protocols: "plain" is ready once open; "live" sends tornado_live's subscribe frame and
// waits for "subscribed"; "sio" speaks Engine.IO v4 / Socket.IO v5 over raw `ws`
// (?EIO=4&transport=websocket: "0{...}" open, "40" connect, "42[...]" events, "2" ping
// answered "3"). An event is any text frame holding "bench_seq" (and "bench_t", the
// publisher's clock in epoch ms).
'use strict';
const fs = require('fs');
const http = require('http');
const WebSocket = require('ws');

const cfg = JSON.parse(process.argv[2]);
const now = () => performance.timeOrigin + performance.now();
const SEQ = Buffer.from('"bench_seq"');
const T = Buffer.from('"bench_t"');

function fail(message) {
  process.stderr.write(`load.js: ${message}\n`);
  process.exit(1);
}
setTimeout(() => fail(`not done within ${cfg.timeout} s`), cfg.timeout * 1000).unref();

function get(url, agent) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve(Buffer.concat(chunks).toString()));
      res.on('error', reject);
    });
    req.setTimeout(cfg.timeout * 1000, () => req.destroy(new Error(`timeout: ${url}`)));
    req.on('error', reject);
  });
}
const control = new http.Agent({ keepAlive: true, maxSockets: 4 });

function cpu(pid) {  // seconds on a CPU of every thread of pid (schedstat: ns; else ticks)
  try {
    let ns = 0;
    for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'ascii').split(' ')[0]);
    }
    return ns / 1e9;
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
  }
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'ascii');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / cfg.clk_tck;
}
function rss(pid) {  // KiB
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'ascii'));
  return m ? Number(m[1]) : 0;
}
const cpus = () => cfg.pids.map(cpu);
const rssAll = () => cfg.pids.map(rss);
const mine = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };

function numberAfter(buf, key) {  // the number after "key": in buf, or NaN
  let i = buf.indexOf(key);
  if (i < 0) return NaN;
  i += key.length;
  while (buf[i] === 0x3a || buf[i] === 0x20) i++;  // ':' and ' '
  let j = i;
  while ((buf[j] >= 0x30 && buf[j] <= 0x39) || buf[j] === 0x2e || buf[j] === 0x2d || buf[j] === 0x65 || buf[j] === 0x2b) j++;
  return Number(buf.toString('latin1', i, j));
}

// -- subscribers -------------------------------------------------------------------------
const state = {
  deliveries: 0, gaps: 0, closed: 0, lastDelivery: 0, doneClients: 0,
  latencies: null, latencyCount: 0, events: new Map(), target: Infinity, onDone: null,
};
const subs = [];

function subscribe(index) {
  return new Promise((resolve, reject) => {
    const server = cfg.servers[index % cfg.servers.length];
    const ws = new WebSocket(server.url, { perMessageDeflate: false });
    const sub = { ws, count: 0, last: 0, ready: false, closing: false };
    subs.push(sub);
    const ready = () => { sub.ready = true; resolve(); };
    ws.on('open', () => {
      if (cfg.proto === 'live') ws.send('{"type":"subscribe","channel":"users"}');
      else if (cfg.proto === 'plain') ready();
    });
    ws.on('message', (data) => {
      if (cfg.proto === 'sio') {
        if (data.length === 1 && data[0] === 0x32) { ws.send('3'); return; }  // ping
        if (!sub.ready) {
          if (data[0] === 0x30) ws.send('40');  // Engine.IO open: connect the namespace
          else if (data[0] === 0x34 && data[1] === 0x30) ready();  // "40": connected
          return;
        }
      } else if (!sub.ready) {
        if (data.includes('"subscribed"')) ready();
        return;
      }
      const seq = numberAfter(data, SEQ);
      if (Number.isNaN(seq)) return;
      const t = now();
      sub.count += 1;
      if (seq !== sub.last + 1) state.gaps += 1;
      sub.last = seq;
      state.deliveries += 1;
      state.lastDelivery = t;
      if (state.latencies !== null) {
        const latency = t - numberAfter(data, T);
        if (state.latencyCount < state.latencies.length) state.latencies[state.latencyCount++] = latency;
        const event = state.events.get(seq);
        if (event === undefined) state.events.set(seq, [latency, latency]);
        else { event[0] = Math.min(event[0], latency); event[1] = Math.max(event[1], latency); }
      }
      if (sub.count === cfg.events) state.doneClients += 1;
      if (state.deliveries >= state.target && state.onDone) state.onDone();
    });
    ws.on('error', (err) => { if (!sub.ready) reject(err); });
    ws.on('close', () => { if (!sub.closing) state.closed += 1; });
  });
}

async function connectAll() {  // then one warm-up event to all, not counted
  let next = 0;
  const worker = async () => {
    while (next < cfg.clients) await subscribe(next++);
  };
  await Promise.all(Array.from({ length: Math.min(cfg.concurrency, cfg.clients) }, worker));
  await get(publishUrl(1), control);
  await delivered(cfg.clients);
  if (state.deliveries !== cfg.clients) fail(`warm-up: ${state.deliveries}/${cfg.clients} delivered`);
  await sleep(200);
  state.deliveries = 0; state.gaps = 0; state.doneClients = 0;
  for (const sub of subs) sub.count = 0;
}

function delivered(target) {  // resolves once target deliveries arrived, or none for cfg.stall ms
  return new Promise((resolve) => {
    state.target = target;
    let timer = null;
    const finish = () => { clearInterval(timer); state.onDone = null; resolve(); };
    state.onDone = finish;
    if (state.deliveries >= target) { finish(); return; }
    let seen = state.deliveries;
    let since = now();
    timer = setInterval(() => {
      if (state.deliveries !== seen) { seen = state.deliveries; since = now(); }
      else if (now() - since > cfg.stall) finish();
    }, 50);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}
function latencyFigures(values) {
  const sorted = Float64Array.from(values).sort();
  return { p50: quantile(sorted, 0.5), p99: quantile(sorted, 0.99), max: sorted.length ? sorted[sorted.length - 1] : null, count: sorted.length };
}
const publishUrl = (n) => `${cfg.servers[0].control}${cfg.path || '/publish'}?n=${n}`;

// -- scenarios ---------------------------------------------------------------------------
async function burst() {
  const rssBefore = rssAll();
  const connectStart = now();
  await connectAll();
  const connectSeconds = (now() - connectStart) / 1000;
  const rssConnected = rssAll();
  const cpu0 = cpus(); const mine0 = mine(); const t0 = now();
  const reply = get(publishUrl(cfg.events), control);
  await delivered(cfg.clients * cfg.events);
  const cpu1 = cpus(); const mine1 = mine();
  const answer = JSON.parse(await reply);
  return {
    expected: cfg.clients * cfg.events, deliveries: state.deliveries, gaps: state.gaps,
    closed: state.closed, complete: state.doneClients, receivers: answer.receivers,
    seconds: (state.lastDelivery - t0) / 1000, connect_seconds: connectSeconds,
    server_cpu: cpu1.map((c, i) => c - cpu0[i]), load_cpu: mine1 - mine0,
    rss_before: rssBefore, rss_connected: rssConnected,
  };
}

async function rate() {
  await connectAll();
  const n = Math.max(1, Math.round(cfg.rate * cfg.seconds));
  state.latencies = new Float64Array(cfg.clients * n);
  const cpu0 = cpus(); const mine0 = mine(); const t0 = now();
  const replies = [];
  for (let k = 0; k < n; k++) {
    const due = t0 + (k * 1000) / cfg.rate;  // the event's time: latency counts any queueing
    await sleep(due - now());
    replies.push(get(`${publishUrl(1)}&t=${due}`, control));
  }
  const answers = (await Promise.all(replies)).map((text) => JSON.parse(text));
  await delivered(cfg.clients * n);
  await sleep(t0 + cfg.seconds * 1000 - now());  // the CPU window is at least cfg.seconds
  const seconds = (now() - t0) / 1000;
  const cpu1 = cpus(); const mine1 = mine();
  return {
    events: n, expected: cfg.clients * n, deliveries: state.deliveries, gaps: state.gaps,
    closed: state.closed, seconds, server_cpu: cpu1.map((c, i) => c - cpu0[i]),
    load_cpu: mine1 - mine0, latency_ms: latencyFigures(state.latencies.subarray(0, state.latencyCount)),
    first_ms: latencyFigures([...state.events.values()].map((e) => e[0])),
    last_ms: latencyFigures([...state.events.values()].map((e) => e[1])),
    save_ms: latencyFigures(answers.filter((a) => a.save_ms !== undefined).map((a) => a.save_ms)),
  };
}

async function poll() {  // cfg.clients pollers, one GET /poll each cfg.period ms, staggered
  const n = Math.max(1, Math.round(cfg.rate * cfg.seconds));
  const sentAt = [0];
  const staleness = [];
  const agent = new http.Agent({ keepAlive: true, maxSockets: cfg.clients + 4 });
  const t0 = now() + 200;
  const end = t0 + cfg.seconds * 1000 + cfg.period + 500;  // every update seen at least once
  let requests = 0;
  const poller = async (i) => {
    let seen = 0;
    for (let at = t0 + (i * cfg.period) / cfg.clients; at < end; at += cfg.period) {
      await sleep(at - now());
      const doc = JSON.parse(await get(`${cfg.servers[0].control}/poll`, agent));
      const got = now();
      requests += 1;
      for (let k = seen + 1; k <= doc.bench_seq; k++) if (sentAt[k]) staleness.push(got - sentAt[k]);
      seen = Math.max(seen, doc.bench_seq);
    }
  };
  const pollers = Array.from({ length: cfg.clients }, (_, i) => poller(i));
  await sleep(t0 - now());
  const cpu0 = cpus(); const mine0 = mine();
  for (let k = 1; k <= n; k++) {
    await sleep(t0 + ((k - 1) * 1000) / cfg.rate - now());
    sentAt[k] = now();
    await get(publishUrl(1), control);
  }
  await sleep(t0 + cfg.seconds * 1000 - now());
  const cpu1 = cpus(); const mine1 = mine();
  await Promise.all(pollers);
  return {
    events: n, requests, seconds: cfg.seconds, server_cpu: cpu1.map((c, i) => c - cpu0[i]),
    load_cpu: mine1 - mine0, staleness_ms: latencyFigures(staleness),
  };
}

const scenarios = { burst, rate, poll };
scenarios[cfg.scenario]().then((figures) => {
  process.stdout.write(JSON.stringify(figures) + '\n');
  for (const sub of subs) { sub.closing = true; sub.ws.terminate(); }
  process.exit(0);
}, (err) => fail(err && err.stack ? err.stack : String(err)));
