"""A black-box network fuzzer against the release binary: many connections send mutated real
client traffic (handshake, declares with arguments, publishes with headers, consumes, acks,
transactions, closes) and random frames. After each batch the broker must be alive, must not
have logged a panic, must still serve a normal client, and its RSS must come back near where
it started once the batch's connections are gone.

Bounded: FUZZ_CONNECTIONS (default 5,000) connections in batches of FUZZ_BATCH (100), each
connection sends at most a few KB and waits at most FUZZ_READ_S (0.05 s) for replies; FUZZ_SEED
picks the run. Long runs by hand: FUZZ_CONNECTIONS=200000 (figures in docs/security.md)."""
import os
import random
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pika

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import amqp_raw as a  # noqa: E402
from test_hardening import rss_mb, still_serves as serves  # noqa: E402

HOST = "127.0.0.1"
CONNECTIONS = int(os.environ.get("FUZZ_CONNECTIONS", "5000"))
BATCH = int(os.environ.get("FUZZ_BATCH", "100"))
SEED = int(os.environ.get("FUZZ_SEED", "1"))
READ_S = float(os.environ.get("FUZZ_READ_S", "0.05"))


def seeds():
    """Byte streams a real client sends, frame by frame (lists of frames), after the protocol
    header."""
    hs = [a.start_ok(), a.tune_ok(), a.connection_open("/")]
    ch = [a.channel_open(1)]
    declare = [a.queue_declare(1, "fuzz-q", arguments={"x-message-ttl": 1000, "x-max-length": 10,
                                                       "x-dead-letter-exchange": "amq.fanout",
                                                       "x-queue-type": "classic"})]
    publish = a.publish_message(1, b"payload" * 20, routing_key="fuzz-q", mandatory=True,
                                headers={"k": "v", "n": 1, "nested": {"a": [1, "x", {"b": True}]}},
                                delivery_mode=2, expiration="500", priority=3)
    consume = [a.method_frame(1, 60, 20, a.short(0) + a.shortstr("fuzz-q") + a.shortstr("")
                              + a.bits(False, False, False, False) + a.table({"x-priority": 5}))]
    ack = [a.method_frame(1, 60, 80, a.longlong(1) + a.bits(True))]
    tx = [a.method_frame(1, 90, 10), publish, a.method_frame(1, 90, 20)]
    bind = [a.method_frame(1, 50, 20, a.short(0) + a.shortstr("fuzz-q") + a.shortstr("amq.topic")
                           + a.shortstr("a.#.*") + a.bits(False) + a.table({"x-match": "any"}))]
    close = [a.channel_close(1), a.connection_close()]
    return [
        hs + ch + declare + [publish] + consume + ack + close,
        hs + ch + tx + bind + close,
        hs + ch + [a.basic_qos(1, 0, 10)] + declare + [publish, publish] + close,
        hs,
    ]


def mutate(rng, frames):
    """One of: flip bytes, truncate, repeat or drop a frame, corrupt a length field, insert a
    random frame, splice frames of another seed."""
    frames = list(frames)
    op = rng.randrange(7)
    i = rng.randrange(len(frames))
    f = bytearray(frames[i])
    if op == 0:
        for _ in range(rng.randint(1, 8)):
            f[rng.randrange(len(f))] = rng.randrange(256)
        frames[i] = bytes(f)
    elif op == 1:
        frames[i] = bytes(f[:rng.randrange(len(f))])
        frames = frames[:i + 1]
    elif op == 2:
        frames.insert(i, frames[i])
    elif op == 3 and len(frames) > 1:
        del frames[i]
    elif op == 4 and len(f) > 7:
        # the frame size, or a length inside the payload
        pos = 3 if rng.random() < 0.5 else rng.randrange(7, len(f) - 3) if len(f) > 10 else 3
        f[pos:pos + 4] = struct.pack(">I", rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF,
                                                       rng.randrange(1 << 32)]))
        frames[i] = bytes(f)
    elif op == 5:
        ftype = rng.choice([1, 2, 3, 8, rng.randrange(256)])
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        frames.insert(i, a.frame(ftype, rng.randrange(4), payload))
    else:
        other = rng.choice(seeds())
        j = rng.randrange(len(other))
        frames = frames[:i] + other[j:]
    return frames


def one(port, data):
    try:
        s = socket.create_connection((HOST, port), timeout=2)
    except OSError:
        return False
    try:
        s.settimeout(READ_S)
        s.sendall(a.PROTOCOL_HEADER)
        for chunk in data:
            s.sendall(chunk)
        try:
            while s.recv(65536):
                pass
        except (socket.timeout, OSError):
            pass
    except OSError:
        pass
    finally:
        s.close()
    return True


def test_mutated_client_traffic_never_hurts_the_broker(broker, port):
    rng = random.Random(SEED)
    pool = seeds()
    baseline = rss_mb(broker.proc.pid)
    peak = baseline
    sent = 0
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as ex:
        while sent < CONNECTIONS:
            batch = [mutate(rng, rng.choice(pool)) for _ in range(min(BATCH, CONNECTIONS - sent))]
            if rng.random() < 0.1:
                batch.append([bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))])
            list(ex.map(lambda d: one(port, d), batch))
            sent += len(batch)
            assert broker.proc.poll() is None, "the broker exited"
            peak = max(peak, rss_mb(broker.proc.pid))
            assert serves(port), f"not serving after {sent} connections"
    log = "".join(broker.lines)
    assert "panicked" not in log and "fatal runtime error" not in log, log[-4000:]
    # Memory comes back: what the fuzz connections held is released when they are gone.
    deadline = time.monotonic() + 10
    while rss_mb(broker.proc.pid) > baseline + 64 and time.monotonic() < deadline:
        time.sleep(0.2)
    final = rss_mb(broker.proc.pid)
    print(f"netfuzz: {sent} connections in {time.monotonic() - started:.1f}s, "
          f"rss {baseline:.0f} -> peak {peak:.0f} -> {final:.0f} MB")
    assert final <= baseline + 64, f"RSS {baseline:.0f} -> {final:.0f} MB"
    # Clean up what the seeds declared.
    conn = pika.BlockingConnection(pika.ConnectionParameters(HOST, port))
    conn.channel().queue_delete("fuzz-q")
    conn.close()
