// @binance/spot (Binance's official JavaScript connector) against shardcast, with only its
// wsURL changed. It opens /stream?streams= and SUBSCRIBEs in-band (random 32-hex ids).
// Usage: node binance_spot.js ws://HOST:PORT http://HOST:PORT ; exits 0 when every check passed.
'use strict';
const http = require('node:http');
const { Spot } = require('@binance/spot');

const [ws, base] = process.argv.slice(2);
const timer = setTimeout(() => {
  console.log('TIMEOUT');
  process.exit(2);
}, 30000);

// node:http, not fetch: fetch adds Sec-Fetch-Mode, which (rightly) makes a request untrusted.
function publish(topic, payload) {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify(payload);
    const url = new URL(`/publish/${topic}`, base);
    const req = http.request(
      url,
      { method: 'POST', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } },
      (res) => {
        res.resume();
        res.statusCode === 204 ? resolve() : reject(new Error(`publish: ${res.statusCode}`));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

async function main() {
  const client = new Spot({ configurationWebsocketStreams: { wsURL: ws } });
  const connection = await client.websocketStreams.connect();
  const trade = { e: 'trade', E: 1, s: 'BTCUSDT', t: 9, p: '99.5', q: '3' };
  let received = null;
  const stream = connection.trade({ symbol: 'btcusdt' });
  stream.on('message', (data) => {
    received = data;
  });
  // The SUBSCRIBE travels after connect: publish until the trade comes back.
  for (let i = 0; i < 100 && received === null; i++) {
    await publish('btcusdt@trade', trade);
    await new Promise((r) => setTimeout(r, 100));
  }
  if (JSON.stringify(received) !== JSON.stringify(trade)) {
    throw new Error(`got ${JSON.stringify(received)}`);
  }
  console.log('ok trade stream');
  stream.unsubscribe();
  await connection.disconnect();
  clearTimeout(timer);
  console.log('PASS');
}

main().catch((e) => {
  console.log(`FAIL ${e.stack || e}`);
  process.exit(1);
});
