"""The pattern docs/testing.md recommends for a test suite: one Warren for the whole session,
and `POST /api/warren/reset` between tests, so every test starts from the boot state (no
queue, exchange, message, policy or connection left by the one before) without paying for a
new broker each time.

The tests below declare the same names and would see each other's leftovers without the
reset. The last one compares the two ways on the same work, and the file's run time shows it.
"""
import base64
import json
import os
import time
import urllib.request

import pika
import pytest

from conftest import Broker

CONFIG = "[management]\nenabled = true\nport = 0\n"


@pytest.fixture(scope="session")
def warren():
    """One broker for the whole session (in a real suite this lives in conftest.py)."""
    b = Broker(config=CONFIG)
    yield b
    b.stop()


def reset(b):
    req = urllib.request.Request(f"http://127.0.0.1:{b.mgmt_port}/api/warren/reset",
                                 data=b"{}", method="POST")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


@pytest.fixture
def amqp(warren):
    """A clean broker for each test: reset first, then a channel."""
    reset(warren)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", warren.port))
    yield conn.channel()
    if conn.is_open:
        conn.close()


def scenario(ch, i):
    """What a typical test does: topology, a few messages, assertions on exact counts."""
    ch.exchange_declare("orders", "topic", durable=True)
    ch.queue_declare("billing", durable=True, arguments={"x-max-length": 100})
    ch.queue_bind("billing", "orders", "order.*")
    for n in range(5):
        ch.basic_publish("orders", "order.created", f"{i}-{n}".encode(),
                         pika.BasicProperties(delivery_mode=2))
    # Exactly this test's messages: nothing left from an earlier test.
    assert ch.queue_declare("billing", passive=True).method.message_count == 5
    m, _, body = ch.basic_get("billing", auto_ack=True)
    assert body == f"{i}-0".encode()


@pytest.mark.parametrize("i", range(8))
def test_each_test_starts_clean(amqp, i):
    scenario(amqp, i)


def test_a_reset_costs_less_than_a_broker_per_test(warren):
    rounds = 8
    started = time.monotonic()
    for i in range(rounds):
        reset(warren)
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", warren.port))
        scenario(conn.channel(), i)
        conn.close()
    shared = time.monotonic() - started
    started = time.monotonic()
    for i in range(rounds):
        b = Broker(config=CONFIG)
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.port))
            scenario(conn.channel(), i)
            conn.close()
        finally:
            b.stop()
    fresh = time.monotonic() - started
    print(f"\n{rounds} tests: shared broker + reset {shared * 1000:.0f} ms, "
          f"a broker per test {fresh * 1000:.0f} ms")
    if os.environ.get("WARREN_EXTERNAL") != "1":
        assert shared < fresh, (shared, fresh)
