"""kill -9 the release binary under a confirmed publishing load, restart it, drain: every
confirmed message is there exactly once (none of them was delivered, so none may repeat).

CRASH_ROUNDS (default 3) sets the number of rounds; by hand: CRASH_ROUNDS=200.
"""
import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time

import pika
import pytest

from conftest import ROOT

BIN = os.environ.get("WARREN_BIN", os.path.join(ROOT, "target", "release", "warren"))
LISTENING = re.compile(r"connections on 127\.0\.0\.1:(\d+)")


def start(data_dir):
    proc = subprocess.Popen(
        [BIN, "--bind", "127.0.0.1", "--port", "0", "--data-dir", data_dir, "--log-level", "warn,warren=info"],
        stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 20
    for line in proc.stderr:
        m = LISTENING.search(line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(m.group(1))
        assert time.monotonic() < deadline, "warren did not start"
    raise AssertionError("warren exited: %s" % proc.wait())


def publisher(port, queue, confirmed, stop):
    """Publish persistent messages with confirms until the broker dies."""
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, heartbeat=0))
        ch = conn.channel()
        ch.confirm_delivery()
        i = len(confirmed)
        while not stop.is_set():
            ch.basic_publish("", queue, str(i).encode(),
                             pika.BasicProperties(delivery_mode=2))  # returns once confirmed
            confirmed.append(i)
            i += 1
    except Exception:
        pass  # the broker was killed


@pytest.mark.parametrize("round_", range(int(os.environ.get("CRASH_ROUNDS", "3"))))
def test_kill_9_loses_no_confirmed_message(round_):
    rng = random.Random(round_)
    with tempfile.TemporaryDirectory() as data:
        proc, port = start(data)
        queue = "crash-%d" % round_
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        conn.channel().queue_declare(queue, durable=True)
        conn.close()
        confirmed, stop = [], threading.Event()
        t = threading.Thread(target=publisher, args=(port, queue, confirmed, stop), daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        want = rng.randint(50, 400)
        while len(confirmed) < want and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.random() * 0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        t.join(5)
        assert len(confirmed) > 0
        proc, port = start(data)
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
            ch = conn.channel()
            got = []
            while True:
                m, props, body = ch.basic_get(queue, auto_ack=True)
                if m is None:
                    break
                assert not m.redelivered, "never delivered before the crash"
                got.append(int(body))
            conn.close()
            assert len(got) == len(set(got)), "duplicates after recovery"
            missing = set(confirmed) - set(got)
            assert not missing, "confirmed but lost: %s" % sorted(missing)[:10]
            assert got == sorted(got), "order kept"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
