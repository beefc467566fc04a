"""The x-delayed-message exchange with pika, against the release binary.

1. Retry with exponential back-off (docs/dead-letters.md): a consumer that fails republishes the
   message to a delayed exchange with `x-delay` = 100 ms × 2^attempt and an attempt counter; after
   3 failures it parks the message. Each retry arrives no earlier than its back-off.
2. kill -9 while persistent delayed messages are being published with confirms: after a restart
   every confirmed message arrives exactly once, none before its time, in due order.

RabbitMQ 3.10.8 here has no delayed-message plugin, so these are not differential; the
plugin's behaviours they rely on are read from its source (compatibility.md says which).
CRASH_ROUNDS (default 3) sets the rounds of the second test.
"""
import os
import random
import signal
import tempfile
import threading
import time

import pika
import pytest

from test_crash import start

BASE_MS = 100
MAX_ATTEMPTS = 3


def delayed_exchange(ch, name, kind="direct"):
    ch.exchange_declare(name, "x-delayed-message", durable=True,
                        arguments={"x-delayed-type": kind})


def test_retry_with_exponential_backoff_through_a_delayed_exchange(broker):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    ch = conn.channel()
    delayed_exchange(ch, "jobs.delayed")
    for q in ("jobs", "jobs.parking"):
        ch.queue_declare(q, durable=True)
    ch.queue_bind("jobs", "jobs.delayed", "job")
    ch.basic_publish("jobs.delayed", "job", b"flaky", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("jobs.delayed", "job", b"poison", pika.BasicProperties(delivery_mode=2))
    seen = {"flaky": [], "poison": []}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (len(seen["flaky"]) == 3
                                               and ch.queue_declare("jobs.parking", passive=True)
                                               .method.message_count == 1):
        method, props, body = ch.basic_get("jobs")
        if method is None:
            conn.process_data_events(0.01)
            continue
        name = body.decode()
        attempt = (props.headers or {}).get("x-attempt", 0)
        seen[name].append((time.monotonic(), attempt, (props.headers or {}).get("x-delay")))
        ok = name == "flaky" and attempt == 2  # the flaky job succeeds on its third try
        if ok:
            ch.basic_ack(method.delivery_tag)
        elif attempt + 1 >= MAX_ATTEMPTS:
            ch.basic_publish("", "jobs.parking", body,
                             pika.BasicProperties(headers=props.headers, delivery_mode=2))
            ch.basic_ack(method.delivery_tag)
        else:
            backoff = BASE_MS * 2 ** attempt
            ch.basic_publish("jobs.delayed", "job", body, pika.BasicProperties(
                delivery_mode=2, headers={"x-attempt": attempt + 1, "x-delay": backoff}))
            ch.basic_ack(method.delivery_tag)
    for name in ("flaky", "poison"):
        tries = seen[name]
        assert [a for _, a, _ in tries] == [0, 1, 2], (name, tries)
        # Each retry waited at least its back-off, and carries it negated (the plugin's mark).
        for i in (1, 2):
            waited = tries[i][0] - tries[i - 1][0]
            assert waited >= BASE_MS * 2 ** (i - 1) / 1000 - 0.005, (name, i, waited)
            assert tries[i][2] == -BASE_MS * 2 ** (i - 1)
        assert tries[0][2] is None
    assert ch.queue_declare("jobs.parking", passive=True).method.message_count == 1
    method, _, body = ch.basic_get("jobs.parking", auto_ack=True)
    assert body == b"poison"
    conn.close()


def delayed_publisher(port, confirmed, stop, rng):
    """Publish persistent delayed messages with confirms until the broker dies; records
    (id, earliest due time) once confirmed."""
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, heartbeat=0))
        ch = conn.channel()
        ch.confirm_delivery()
        i = 0
        while not stop.is_set():
            delay = rng.randint(2000, 2500)
            sent = time.time()
            ch.basic_publish("dx", "", str(i).encode(), pika.BasicProperties(
                delivery_mode=2, headers={"x-delay": delay}))  # returns once confirmed
            confirmed.append((i, sent + delay / 1000))
            i += 1
    except Exception:
        pass  # the broker was killed


@pytest.mark.parametrize("round_", range(int(os.environ.get("CRASH_ROUNDS", "3"))))
def test_kill_9_loses_no_confirmed_delayed_message(round_):
    rng = random.Random(round_)
    with tempfile.TemporaryDirectory() as data:
        proc, port = start(data)
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        ch = conn.channel()
        delayed_exchange(ch, "dx", "fanout")
        ch.queue_declare("dq", durable=True)
        ch.queue_bind("dq", "dx")
        conn.close()
        confirmed, stop = [], threading.Event()
        t = threading.Thread(target=delayed_publisher, args=(port, confirmed, stop, rng),
                             daemon=True)
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
        assert confirmed
        proc, port = start(data)
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
            ch = conn.channel()
            got = []
            due = dict(confirmed)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                m, props, body = ch.basic_get("dq", auto_ack=True)
                if m is None:
                    if len(got) >= len(confirmed) and time.time() > max(due.values()) + 0.5:
                        break
                    conn.process_data_events(0.02)
                    continue
                i = int(body)
                # Never before its time (the client's clock stamps before the broker's).
                if i in due:
                    assert time.time() >= due[i] - 0.05, (i, due[i], time.time())
                assert props.headers["x-delay"] < 0
                got.append(i)
            conn.close()
            assert len(got) == len(set(got)), "duplicates after recovery"
            missing = set(due) - set(got)
            assert not missing, "confirmed but lost: %s" % sorted(missing)[:10]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
