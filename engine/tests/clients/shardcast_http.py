"""Publishing into shardcast over HTTP for the client scripts (the Binance clients only read)."""
import json
import urllib.request


def publish(base, topic, payload):
    """POST `payload` as JSON to BASE/publish/TOPIC; a plain loopback request, trusted."""
    req = urllib.request.Request(
        f"{base}/publish/{topic}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 204, r.status
