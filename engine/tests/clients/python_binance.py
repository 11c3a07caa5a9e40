"""python-binance's BinanceSocketManager against shardcast, with only its documented
STREAM_URL attribute changed.

Usage: python_binance.py ws://HOST:PORT http://HOST:PORT
Opens trade_socket (/ws/<symbol>@trade) and multiplex_socket (/stream?streams=…), publishes
over HTTP until each message arrives (the subscription is registered right after the
handshake, so the first publish may race it), checks the payloads, exits 0 on success.
"""
import asyncio
import sys

from binance import AsyncClient, BinanceSocketManager

import shardcast_http

WS, HTTP = sys.argv[1], sys.argv[2]


def publish(topic, payload):
    shardcast_http.publish(HTTP, topic, payload)


async def receive(socket, topic, payload):
    for _ in range(100):
        await asyncio.get_running_loop().run_in_executor(None, publish, topic, payload)
        try:
            return await asyncio.wait_for(socket.recv(), 0.3)
        except asyncio.TimeoutError:
            continue
    raise SystemExit(f"TIMEOUT: nothing arrived on {topic}")


async def main():
    client = AsyncClient()  # no request is made: streams need no REST call
    bm = BinanceSocketManager(client)
    bm.STREAM_URL = WS + "/"
    trade = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 7, "p": "100.0", "q": "1"}
    async with bm.trade_socket("BTCUSDT") as ts:
        got = await receive(ts, "btcusdt@trade", trade)
        assert got == trade, got
        print("ok trade_socket", flush=True)
    depth = {"lastUpdateId": 160, "bids": [["0.0024", "10"]], "asks": [["0.0026", "100"]]}
    async with bm.multiplex_socket(["ethusdt@depth5", "btcusdt@trade"]) as ms:
        got = await receive(ms, "ethusdt@depth5", depth)
        assert got == {"stream": "ethusdt@depth5", "data": depth}, got
        print("ok multiplex_socket", flush=True)
    await client.close_connection()
    print("PASS", flush=True)


asyncio.run(main())
