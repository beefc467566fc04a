"""bench/rss_return.py: does memory go back to the OS? RSS of a broker holding 200,000 x 1 KiB
transient messages, then every second after the queue is deleted, until it is under 30 MB or
40 s pass. WARREN_BIN picks the binary (default target/release/warren).

    integration/.venv/bin/python bench/rss_return.py
"""
import os
import sys
import tempfile
import time

import pika

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration", "python"))
from test_crash import start  # noqa: E402

# In memory: with a data dir the queue would page its messages out past 8 MiB.
_dir = tempfile.mkdtemp(prefix="warren-rss-")
with open(os.path.join(_dir, "broker.toml"), "w") as _f:
    _f.write('[storage]\nmode = "memory"\n')
proc, port = start(_dir, os.path.join(_dir, "broker.toml"))


def rss():
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024


try:
    print("start", rss(), "MB")
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = c.channel()
    ch.queue_declare("big")
    body = b"x" * 1024
    for _ in range(200000):
        ch.basic_publish("", "big", body)
    ch.queue_declare("big", passive=True)
    print("full", rss(), "MB")
    ch.queue_delete("big")
    t0 = time.time()
    for i in range(40):
        time.sleep(1)
        r = rss()
        if i % 5 == 0 or r < 30:
            print(f"{time.time() - t0:.0f} s after delete: {r} MB")
        if r < 30:
            break
    c.close()
finally:
    proc.terminate()
    proc.wait()
