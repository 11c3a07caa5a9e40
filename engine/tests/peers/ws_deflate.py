"""Python `websockets` (compression on, its default) as a real permessage-deflate peer of
shardcast, driven by engine/tests/deflate_peers.rs.

    python ws_deflate.py ws://127.0.0.1:PORT N

1. subscribes to /ws/py (prints `ready <Sec-WebSocket-Extensions>` once its subscription is
   confirmed), then reads N messages the test publishes;
2. publishes N messages on /pub/py-out (websockets compresses every message it sends);
3. round-trips a large text and a large binary message through /echo.

Frames are counted where websockets' permessage-deflate extension sees them (RSV1 set), so the
report says how many arrived compressed and how many left compressed. The last line printed is
a JSON report.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.extensions import permessage_deflate

counts = {"rsv1_in": 0, "rsv1_out": 0}

_decode = permessage_deflate.PerMessageDeflate.decode
_encode = permessage_deflate.PerMessageDeflate.encode


def decode(self, frame, *, max_size=None):
    if frame.rsv1:
        counts["rsv1_in"] += 1
    return _decode(self, frame, max_size=max_size)


def encode(self, frame):
    out = _encode(self, frame)
    if out.rsv1:
        counts["rsv1_out"] += 1
    return out


permessage_deflate.PerMessageDeflate.decode = decode
permessage_deflate.PerMessageDeflate.encode = encode


def event(i):
    levels = ",".join(f'["97{i % 1000:03}.{k:02}","0.{(i * k * 7919) % 100000:05}"]' for k in range(10 + i % 20))
    return f'{{"e":"depthUpdate","s":"BTCUSDT","u":{i},"b":[{levels}]}}'


async def main(base, n):
    report = {}
    async with connect(f"{base}/ws/py") as sub:
        report["extensions"] = sub.response.headers.get("Sec-WebSocket-Extensions")
        await sub.send('{"method":"LIST_SUBSCRIPTIONS","id":"sync"}')
        report["sync"] = json.loads(await sub.recv())
        print("ready", report["extensions"], flush=True)
        report["received"] = [await sub.recv() for _ in range(n)]
    async with connect(f"{base}/pub/py-out") as pub:
        for i in range(n):
            await pub.send(event(i))
    async with connect(f"{base}/echo") as echo:
        text = event(12345) * 20
        await echo.send(text)
        report["echo_text"] = (await echo.recv()) == text
        blob = bytes(range(256)) * 64
        await echo.send(blob)
        report["echo_binary"] = (await echo.recv()) == blob
    report.update(counts)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
