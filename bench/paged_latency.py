"""bench/paged_latency.py: do other connections feel a queue being drained from disk?

Fills durable queue "deep" with N persistent 1 KiB messages (warren-perf, confirms), restarts
the broker (so every message is paged out: an index entry, its body in the log), drops the
page cache (cold reads; needs root), then measures the end-to-end latency of a probe — a pika
connection publishing 500 transient msgs/s to another queue, a second pika connection
consuming them — for S seconds idle, then for S seconds while "deep" is drained (every body
read from disk): by default at full speed by bench/amqp_tool.py (no-ack; this saturates both
cores of a small machine, so the probe also measures CPU contention), or with `slow` by a pika
consumer acking each message with prefetch 100 (a few thousand msgs/s: the broker has CPU to
spare, so a probe that waits is waiting on the broker's reads). Prints p50/p99/max of each
phase. WARREN_BIN picks the broker (default target/release/warren).

    integration/.venv/bin/python bench/paged_latency.py [N] [S] [slow]
"""
import os
import subprocess
import sys
import tempfile
import threading
import time

import pika

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "python"))
from test_crash import start  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 5
slow = len(sys.argv) > 3 and sys.argv[3] == "slow"
perf = os.path.join(HERE, "..", "target", "release", "warren-perf")
data = tempfile.mkdtemp(prefix="warren-paged-")
proc, port = start(data)
subprocess.run([perf, "--uri", f"amqp://guest:guest@127.0.0.1:{port}/%2f", "--consumers", "0",
                "--persistent", "--size", "1024", "--count", str(n), "--confirm", "1000",
                "--keep-queues", "--queue", "deep"], check=True, capture_output=True)
proc.terminate()
proc.wait()
proc, port = start(data)
subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=False)

lat, phase, stop = {"idle": [], "drain": []}, ["idle"], threading.Event()


def consume():
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = c.channel()
    ch.queue_declare("probe")

    def on(ch_, m, props, body):
        lat[phase[0]].append((time.perf_counter_ns() - int(body)) / 1e6)

    ch.basic_consume("probe", on, auto_ack=True)
    while not stop.is_set():
        c.process_data_events(0.05)
    c.close()


t = threading.Thread(target=consume, daemon=True)
t.start()
time.sleep(0.5)
pc = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
pch = pc.channel()


def probe(seconds):
    end = time.monotonic() + seconds
    nxt = time.monotonic()
    while time.monotonic() < end:
        pch.basic_publish("", "probe", str(time.perf_counter_ns()).encode())
        nxt += 1 / 500
        pc.sleep(max(0, nxt - time.monotonic()))


probe(secs)
phase[0] = "drain"
SLOW = """
import pika, sys, time
c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", int(sys.argv[1])))
ch = c.channel()
ch.basic_qos(prefetch_count=100)
n, t0 = 0, time.monotonic()
for m, p, b in ch.consume("deep", inactivity_timeout=1):
    if m is None or time.monotonic() - t0 > float(sys.argv[2]):
        break
    ch.basic_ack(m.delivery_tag)
    n += 1
print("slow drain: %d messages in %.1f s" % (n, time.monotonic() - t0))
"""
if slow:
    drain = subprocess.Popen([sys.executable, "-c", SLOW, str(port), str(secs)],
                             stdout=subprocess.PIPE, text=True)
else:
    drain = subprocess.Popen([sys.executable, os.path.join(HERE, "amqp_tool.py"), "drain",
                              "--port", str(port), "--pid", str(proc.pid), "--queue", "deep"],
                             stdout=subprocess.PIPE, text=True)
probe(secs)
phase[0] = "after"
lat["after"] = []
time.sleep(0.3)
stop.set()
t.join(5)
drained = drain.communicate(timeout=600)[0].strip()
proc.terminate()
proc.wait()


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))] if v else float("nan")


for k in ("idle", "drain"):
    v = lat[k]
    print(f"{k}: {len(v)} probes, p50 {pct(v, .5):.2f} ms, p99 {pct(v, .99):.2f} ms, "
          f"max {max(v) if v else float('nan'):.2f} ms")
print("drain of 'deep':", drained)
