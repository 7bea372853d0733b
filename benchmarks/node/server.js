// The bench's Node.js reference server: `ws` (package.json pins it), at /ws.
//
// An event is JSON.stringify'd once and sent to every open client, the broadcast of the
// `ws` README. Speaks the bench's control protocol (benchmarks/bench.py): prints
// "listening <port>" once bound on 127.0.0.1, GET /publish?n=N publishes N events and
// answers {"receivers": k}, SIGTERM stops it.
'use strict';
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const USER = {
  id: '6650f1c2a9e4b7d3c1a2f3e4',
  name: 'Ada Lovelace',
  email: 'ada@example.com',
  role: 'editor',
  avatar: '/avatars/ada.png',
  updated_at: '2026-11-25T10:42:07Z',
};
let seq = 0;
const now = () => performance.timeOrigin + performance.now();

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname !== '/publish') {
    res.writeHead(404).end();
    return;
  }
  const n = Number(url.searchParams.get('n') || '1');
  const stamp = url.searchParams.get('t');
  for (let i = 0; i < n; i++) {
    seq += 1;
    const data = { ...USER, bench_seq: seq, bench_t: stamp ? Number(stamp) : now() };
    const text = JSON.stringify({ type: 'updated_user', channel: 'users', data });
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(text);
    }
  }
  res.writeHead(200, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ receivers: wss.clients.size }) + '\n');
});
const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false });
const portAt = process.argv.indexOf('--port');
server.listen(portAt > 0 ? Number(process.argv[portAt + 1]) : 0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
