"""How long `POST /api/warren/reset` takes with 1,000 queues holding 100,000 messages.

    integration/.venv/bin/python bench/reset.py target/release/warren [--disk]

Starts the binary (in memory, or with a data dir and persistent messages with --disk), fills
it with pika (100 messages of 16 B per queue), resets over HTTP five times (refilling in
between), and prints the broker's own `elapsed_ms` and the HTTP round trip.
"""
import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.request

import pika


def main():
    binary = sys.argv[1]
    disk = "--disk" in sys.argv
    data = tempfile.mkdtemp(prefix="warren-reset-")
    args = [binary, "--port", "0", "--management-port", "0", "--log-level", "warn"]
    args += ["--data-dir", data] if disk else ["--in-memory"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    ready = json.loads(p.stdout.readline())
    amqp = int(ready["amqp"].rsplit(":", 1)[1])
    http = ready["management"]
    props = pika.BasicProperties(delivery_mode=2 if disk else 1)
    try:
        for round_ in range(5):
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp))
            ch = conn.channel()
            for q in range(1000):
                ch.queue_declare(f"q{q}", durable=disk)
                for _ in range(100):
                    ch.basic_publish("", f"q{q}", b"0123456789abcdef", props)
            ch.queue_declare("q999", passive=True)
            conn.close()
            req = urllib.request.Request(f"http://{http}/api/warren/reset", data=b"{}",
                                         method="POST")
            req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
            started = time.monotonic()
            with urllib.request.urlopen(req) as r:
                body = json.load(r)
            wall = (time.monotonic() - started) * 1000
            print(f"round {round_}: reset of 1,000 queues / 100,000 messages "
                  f"({'disk' if disk else 'memory'}): broker {body['elapsed_ms']:.1f} ms, "
                  f"HTTP round trip {wall:.1f} ms", flush=True)
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    main()
