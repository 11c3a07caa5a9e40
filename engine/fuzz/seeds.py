#!/usr/bin/env python3
"""Seed scripts for the shard_input fuzz target (fuzz_targets/shard_input.rs describes the
script format). Writes corpus/shard_input/*; run from anywhere."""
import os, struct

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x01\x02\x03\x04"


def accept():
    return bytes([0])


def recv(conn, data):
    out = b""
    for i in range(0, len(data), 255):
        chunk = data[i:i + 255]
        out += bytes([1, conn, len(chunk)]) + chunk
    return out


def flush(part=255):
    return bytes([4, part])


def time(units):
    return bytes([3, units])


def publish(topic_index, n8, text=False):
    op = 6 + 8 * topic_index + (0x40 if text else 0)
    return bytes([op, n8]) + bytes(n8 * 8)


def hangup(conn):
    return bytes([5, conn])


def upgrade(path, extra=""):
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def frame(opcode, payload, fin=True, rsv1=False):
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(c ^ MASK[i % 4] for i, c in enumerate(payload))
    return head + MASK + masked


seeds = {
    "stream_seq_subscribe": accept()
    + recv(0, upgrade("/stream?streams=t/c1&seq=1"))
    + flush()
    + publish(0, 4, text=True)
    + publish(1, 2, text=True)
    + flush(100)
    + recv(0, frame(1, b'{"method":"SUBSCRIBE","params":["d1"],"id":1}'))
    + recv(0, frame(1, b'{"method":"LIST_SUBSCRIPTIONS","id":2}'))
    + flush()
    + recv(0, frame(9, b"ping"))
    + recv(0, frame(8, b"\x03\xe8bye"))
    + flush(),
    "resume_since": accept()
    + publish(0, 1, text=True) * 4
    + recv(0, upgrade("/ws/t?seq=1&since=t:2&epoch=0000000000000001"))
    + flush(7)
    + flush()
    + time(200)
    + flush(),
    "echo_fragments_deflate": accept()
    + recv(0, upgrade("/echo", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"))
    + flush()
    + recv(0, frame(1, b"hel", fin=False))
    + recv(0, frame(10, b""))
    + recv(0, frame(0, b"lo", fin=True))
    + recv(0, frame(2, bytes(300)))
    + recv(0, frame(1, b"\xf2\x48\xcd\xc9\xc9\x07\x00", rsv1=True))
    + flush(30)
    + flush(),
    "publisher_and_subscribers": accept()
    + accept()
    + accept()
    + recv(0, upgrade("/ws/t"))
    + recv(1, upgrade("/pub/t"))
    + recv(2, upgrade("/room/t"))
    + flush()
    + recv(1, frame(2, bytes(1000)) * 3)
    + recv(2, frame(1, b"hi room"))
    + bytes([7, 0, 64])
    + flush(1)
    + recv(1, frame(2, bytes(1000)) * 20)
    + flush()
    + hangup(0)
    + time(255)
    + flush(),
    "http_publish": accept()
    + recv(0, b"POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
    + flush()
    + accept()
    + recv(1, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    + flush(),
}

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "corpus", "shard_input")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
