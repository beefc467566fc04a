#!/usr/bin/env python3
"""Listing 10,000 queues over the management API: how long GET /api/queues takes, and whether a
client listing in a loop slows publishers down (the management issue's benchmark row).

    bench/mgmt_listing.py [WARREN_BIN] [QUEUES] [SECONDS]

Starts the release binary in memory mode with the management API on a free port, declares
QUEUES queues (default 10000), times 20 listings (full, and one page of 100), then runs
warren-perf (1 producer, 1 consumer, 16 B, SECONDS, default 10; or with GOPERF set, the
independent amqp091-go client bench/goperf) twice: alone, and while a
thread lists every queue in a loop. Prints a Markdown row per figure.
"""
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pika

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "warren")
QUEUES = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
SECONDS = int(sys.argv[3]) if len(sys.argv) > 3 else 10
PERF = os.path.join(ROOT, "target", "release", "warren-perf")
# GOPERF=/path/to/goperf: measure the publish rate with the independent Go client instead.
GOPERF = os.environ.get("GOPERF")


def start():
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write('[management]\nenabled = true\nport = 0\n')
    cfg.close()
    p = subprocess.Popen([BIN, "--in-memory", "--port", "0", "--config", cfg.name],
                         stderr=subprocess.PIPE, text=True)
    amqp = http = None
    deadline = time.monotonic() + 30
    while (amqp is None or http is None) and time.monotonic() < deadline:
        line = p.stderr.readline()
        if m := re.search(r"management API listening on http://[0-9.]+:(\d+)", line):
            http = int(m.group(1))
        if m := re.search(r"AMQP 0-9-1 connections on [0-9.]+:(\d+)", line):
            amqp = int(m.group(1))
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    return p, amqp, http


def get(http, path):
    req = urllib.request.Request(f"http://127.0.0.1:{http}{path}")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def timed(http, path, n=20):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        body = get(http, path)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times), len(body)


def perf_rate(amqp):
    if GOPERF:
        # The independent client (amqp091-go): bench/goperf, built with `go build -o GOPERF`.
        out = subprocess.run([GOPERF, "-uri", f"amqp://guest:guest@127.0.0.1:{amqp}/",
                              "-duration", f"{SECONDS}s", "-size", "16"],
                             capture_output=True, text=True).stdout
        return json.loads(out)["send_rate"], out
    out = subprocess.run([PERF, "--uri", f"amqp://guest:guest@127.0.0.1:{amqp}/%2f",
                          "-x", "1", "-y", "1", "-s", "16", "-z", str(SECONDS)],
                         capture_output=True, text=True).stdout
    m = re.search(r"([0-9.]+) msg/s", out)
    return float(m.group(1)) if m else float("nan"), out


def main():
    p, amqp, http = start()
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters(port=amqp))
        ch = conn.channel()
        for i in range(QUEUES):
            ch.queue_declare(f"q-{i:05}")
        conn.close()
        full = timed(http, "/api/queues")
        page = timed(http, "/api/queues?page=1&page_size=100")
        print(f"| GET /api/queues, {QUEUES} queues | median {full[0]:.1f} ms, max {full[1]:.1f} ms ({full[2] / 1e6:.1f} MB) |")
        print(f"| GET /api/queues?page=1&page_size=100, {QUEUES} queues | median {page[0]:.1f} ms, max {page[1]:.1f} ms |")
        alone, _ = perf_rate(amqp)
        stop = threading.Event()
        listings = [0]

        def loop():
            while not stop.is_set():
                get(http, "/api/queues")
                listings[0] += 1

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        busy, _ = perf_rate(amqp)
        stop.set()
        t.join()
        client = "goperf" if GOPERF else "warren-perf"
        print(f"| publish rate (1 → 1, 16 B, {client}), alone | {alone:,.0f} msg/s |")
        print(f"| publish rate, while listing {QUEUES} queues in a loop ({listings[0]} listings) | {busy:,.0f} msg/s ({busy / alone:.2f}×) |")
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    main()
