"""binance-connector's SpotWebsocketStreamClient against shardcast, only its base URL changed.

Usage: binance_connector.py ws://HOST:PORT http://HOST:PORT
Connects to bare /ws (and /stream with is_combined=True), SUBSCRIBEs with the connector's own
methods, publishes over HTTP until the trade arrives, then unsubscribes and lists. Prints one
line per check and exits 0 when every check passed (1 otherwise, 2 on timeout).
"""
import json
import sys
import threading
import time

from binance.websocket.spot.websocket_stream import SpotWebsocketStreamClient

import shardcast_http

WS, HTTP = sys.argv[1], sys.argv[2]
DEADLINE = time.time() + 30


def publish(topic, payload):
    shardcast_http.publish(HTTP, topic, payload)


def run(combined):
    messages = []
    cond = threading.Condition()

    def on_message(_, text):
        with cond:
            messages.append(json.loads(text))
            cond.notify_all()

    def wait_for(pred, what):
        with cond:
            while True:
                for m in messages:
                    if pred(m):
                        return m
                left = DEADLINE - time.time()
                if left <= 0:
                    print(f"TIMEOUT waiting for {what}; got {messages}", flush=True)
                    sys.exit(2)
                cond.wait(min(left, 0.1))

    client = SpotWebsocketStreamClient(stream_url=WS, on_message=on_message, is_combined=combined)
    try:
        client.trade(symbol="BTCUSDT", id=1)
        wait_for(lambda m: m == {"result": None, "id": 1}, "the SUBSCRIBE reply")
        trade = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 42, "p": "101.5", "q": "2"}
        publish("btcusdt@trade", trade)
        if combined:
            got = wait_for(lambda m: m.get("stream") == "btcusdt@trade", "the wrapped trade")
            assert got == {"stream": "btcusdt@trade", "data": trade}, got
        else:
            got = wait_for(lambda m: m.get("e") == "trade", "the trade")
            assert got == trade, got
        client.agg_trade(symbol="ethusdt", id=2)
        wait_for(lambda m: m.get("id") == 2, "the second SUBSCRIBE reply")
        client.list_subscribe(id=3)
        listed = wait_for(lambda m: m.get("id") == 3, "LIST_SUBSCRIPTIONS")
        assert listed["result"] == ["btcusdt@trade", "ethusdt@aggTrade"], listed
        client.trade(symbol="btcusdt", id=4, action=client.ACTION_UNSUBSCRIBE)
        wait_for(lambda m: m.get("id") == 4, "the UNSUBSCRIBE reply")
        client.list_subscribe(id=5)
        listed = wait_for(lambda m: m.get("id") == 5, "LIST_SUBSCRIPTIONS")
        assert listed["result"] == ["ethusdt@aggTrade"], listed
        print(f"ok {'combined' if combined else 'raw'}", flush=True)
    finally:
        client.stop()


run(False)
run(True)
print("PASS", flush=True)
