"""kombu (Celery's transport, on py-amqp) against Warren: the flow a Celery worker and its
producers run. Topology declared by kombu entities, a Producer publishing with retry, a Consumer
that acks good tasks and rejects a poison one into a dead-letter exchange, the dead letter read
with its x-death header, and SimpleQueue."""
import os
import queue as stdqueue
import socket
import uuid

import kombu
import pytest
from kombu import Consumer, Exchange, Producer, Queue

PORT = int(os.environ.get("WARREN_PORT", "5672"))
URL = f"amqp://guest:guest@127.0.0.1:{PORT}//"


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def conn():
    with kombu.Connection(URL, connect_timeout=5) as c:
        c.connect()
        yield c


def test_celery_style_flow_with_dead_lettering(conn):
    name = unique("tasks")
    dlx = Exchange(unique("dlx"), type="direct", durable=True)
    dead = Queue(f"{name}.dead", exchange=dlx, routing_key=f"{name}.dead", durable=True)
    tasks_x = Exchange(name, type="direct", durable=True)
    tasks = Queue(name, exchange=tasks_x, routing_key=name, durable=True,
                  queue_arguments={"x-dead-letter-exchange": dlx.name,
                                   "x-dead-letter-routing-key": f"{name}.dead"})
    channel = conn.channel()
    dead(channel).declare()

    producer = Producer(channel)
    policy = {"max_retries": 3, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.5}
    for i in range(10):
        body = {"task": "add", "args": [i, i], "poison": i == 7}
        producer.publish(body, exchange=tasks_x, routing_key=name, declare=[tasks],
                         serializer="json", retry=True, retry_policy=policy,
                         delivery_mode=2, headers={"id": str(i)})

    done, rejected = [], []

    def on_message(body, message):
        if body["poison"]:
            rejected.append(body["args"][0])
            message.reject()  # requeue=False: dead-lettered
        else:
            done.append(sum(body["args"]))
            message.ack()

    with Consumer(conn.channel(), queues=[tasks], callbacks=[on_message],
                  accept=["json"], prefetch_count=4):
        while len(done) + len(rejected) < 10:
            conn.drain_events(timeout=5)
    assert sorted(done) == [2 * i for i in range(10) if i != 7]
    assert rejected == [7]

    # The operator's view: the dead letter with RabbitMQ's x-death header.
    message = dead(conn.channel()).get(no_ack=False, accept=["json"])
    assert message is not None
    assert message.payload["args"] == [7, 7]
    death = message.headers["x-death"][0]
    assert death["reason"] == "rejected"
    assert death["queue"] == name
    assert death["exchange"] == name
    assert death["routing-keys"] == [name]
    assert death["count"] == 1
    assert message.headers["x-first-death-reason"] == "rejected"
    assert message.headers["id"] == "7"
    message.ack()
    assert dead(conn.channel()).get(no_ack=True) is None
    for q in (tasks, dead):
        q(conn.channel()).delete()


def test_producer_retry_reconnects_after_the_connection_drops(conn):
    """kombu's ensure(): the channel's socket is shut down under it; the retried publish
    reconnects and goes through."""
    name = unique("retry")
    q = Queue(name, durable=False, auto_delete=False)
    q(conn.channel()).declare()
    producer = Producer(conn.channel())
    publish = conn.ensure(producer, producer.publish, max_retries=3, interval_start=0,
                          interval_step=0.1)
    publish({"n": 1}, routing_key=name, serializer="json")
    # Drop the TCP connection from below (as a broker restart or network blip would).
    conn.connection.sock.shutdown(socket.SHUT_RDWR)
    publish({"n": 2}, routing_key=name, serializer="json")
    got = []
    chan = conn.channel()
    for _ in range(2):
        m = q(chan).get(no_ack=True, accept=["json"])
        assert m is not None
        got.append(m.payload["n"])
    assert got == [1, 2]
    q(chan).delete()


def test_simple_queue(conn):
    name = unique("simple")
    sq = conn.SimpleQueue(name)
    try:
        for i in range(3):
            sq.put({"i": i}, serializer="json")
        assert len(sq) == 3
        seen = []
        for _ in range(3):
            m = sq.get(block=True, timeout=5)
            seen.append(m.payload["i"])
            m.ack()
        assert seen == [0, 1, 2]
        with pytest.raises(stdqueue.Empty):
            sq.get_nowait()
    finally:
        # Close first: deleting a queue under a live consumer sends it basic.cancel, which
        # py-amqp raises (RabbitMQ does the same).
        sq.close()
        Queue(name)(conn.channel()).delete()
