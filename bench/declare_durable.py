"""bench/declare_durable.py: declare N durable queues, each bound to amq.direct, then delete
them, on a fresh data dir; print the time of each phase and the bytes the broker wrote
(`write_bytes`/`wchar` of /proc/PID/io). WARREN_BIN picks the binary (default
target/release/warren); N from argv (default 10000).

    integration/.venv/bin/python bench/declare_durable.py 10000
"""
import os
import sys
import tempfile
import time

import pika

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration", "python"))
from test_crash import start  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
data = tempfile.mkdtemp(prefix="warren-declare-")
proc, port = start(data)


def io():
    out = {}
    with open(f"/proc/{proc.pid}/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v)
    return out


try:
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = c.channel()
    before = io()
    t0 = time.time()
    for i in range(n):
        ch.queue_declare(f"q{i}", durable=True)
        ch.queue_bind(f"q{i}", "amq.direct", f"k{i}")
    t1 = time.time()
    mid = io()
    for i in range(n):
        ch.queue_delete(f"q{i}")
    t2 = time.time()
    after = io()
    mb = lambda a, b, k: (b[k] - a[k]) / 1e6  # noqa: E731
    print(f"declare+bind {n}: {t1 - t0:.2f} s, {(t1 - t0) / n * 1e6:.0f} us per declare+bind, "
          f"wchar {mb(before, mid, 'wchar'):.1f} MB, write_bytes {mb(before, mid, 'write_bytes'):.1f} MB")
    print(f"delete {n}: {t2 - t1:.2f} s, wchar {mb(mid, after, 'wchar'):.1f} MB, "
          f"write_bytes {mb(mid, after, 'write_bytes'):.1f} MB")
    c.close()
finally:
    proc.terminate()
    proc.wait()
