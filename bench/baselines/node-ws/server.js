// Baseline for shardcast-bench: the same routes as shardcast, written the way most Node.js
// broadcast servers are (the `ws` package, one process, ws.send per subscriber).
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const args = process.argv.slice(2);
const at = args.indexOf('--listen');
const [host, port] = (at >= 0 ? args[at + 1] : '127.0.0.1:0').split(/:(?=[^:]*$)/);

const topics = new Map(); // topic -> Set<WebSocket> of receivers
// --deflate: permessage-deflate as ws users turn it on (per connection, each send compressed
// by that connection's own zlib stream, context takeover kept: ws' defaults), with the same
// 128-byte threshold as shardcast's default so the two compress the same messages.
const perMessageDeflate = args.includes('--deflate') ? { threshold: 128 } : false;
const wss = new WebSocketServer({ noServer: true, perMessageDeflate, maxPayload: 1 << 20 });

function broadcast(topic, data, isBinary) {
  const subs = topics.get(topic);
  if (!subs) return;
  for (const ws of subs) ws.send(data, { binary: isBinary });
}

function subscribe(topic, ws) {
  let subs = topics.get(topic);
  if (!subs) topics.set(topic, (subs = new Set()));
  subs.add(ws);
  ws.on('close', () => {
    subs.delete(ws);
    if (subs.size === 0 && topics.get(topic) === subs) topics.delete(topic);
  });
}

const server = http.createServer((req, res) => {
  const m = /^\/publish\/([^/?]+)/.exec(req.url);
  if (req.method !== 'POST' || !m) { res.writeHead(404).end(); return; }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const type = req.headers['content-type'] || '';
    broadcast(m[1], Buffer.concat(chunks), !(type.startsWith('text/') || type.includes('json')));
    res.writeHead(204).end();
  });
});

server.on('upgrade', (req, socket, head) => {
  const m = /^\/(ws|pub|room)\/([^/?]+)/.exec(req.url);
  if (!m) { socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n'); return; }
  const [, route, topic] = m;
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (route !== 'pub') subscribe(topic, ws);
    if (route === 'ws') return; // subscribers' messages are ignored
    ws.on('message', (data, isBinary) => broadcast(topic, data, isBinary));
  });
});

server.listen(Number(port), host, () => {
  const a = server.address();
  console.log(`node-ws listening on ${a.address}:${a.port}`);
});
