"""Quorum queues with pika, as RabbitMQ 3.10.8 answers (every text below was recorded from it;
`WARREN_EXTERNAL=1 WARREN_PORT=5680 pytest test_quorum.py` replays them against the reference,
all but the default delivery limit, which follows RabbitMQ 4.x). The restart test starts its
own broker on a data directory."""
import os
import signal
import subprocess
import sys
import tempfile
import uuid

import pika
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_crash import start  # noqa: E402

HOST = "127.0.0.1"
PORT = int(os.environ.get("WARREN_PORT", "5672"))
EXTERNAL = os.environ.get("WARREN_EXTERNAL") == "1"


def connect(port=PORT):
    return pika.BlockingConnection(pika.ConnectionParameters(HOST, port, socket_timeout=5))


def uniq(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def declare_error(conn, name, durable=True, exclusive=False, auto_delete=False, **args):
    ch = conn.channel()
    try:
        ch.queue_declare(name, durable=durable, exclusive=exclusive, auto_delete=auto_delete,
                         arguments={"x-queue-type": "quorum", **args})
    except pika.exceptions.ChannelClosedByBroker as e:
        return e.reply_code, e.reply_text
    ch.queue_delete(name)
    ch.close()
    return None


def test_declarations_are_refused_with_rabbitmqs_texts():
    conn = connect()
    n = uniq("qq")
    pre = "PRECONDITION_FAILED - "
    assert declare_error(conn, n, durable=False) == (
        406, pre + "invalid property 'non-durable' for queue '%s' in vhost '/'" % n)
    assert declare_error(conn, n, exclusive=True) == (
        406, pre + "invalid property 'exclusive-owner' for queue '%s' in vhost '/'" % n)
    assert declare_error(conn, n, durable=False, exclusive=True, auto_delete=True) == (
        406, pre + "invalid property 'auto-delete' for queue '%s' in vhost '/'" % n)
    assert declare_error(conn, n, durable=False, **{"x-max-priority": 10}) == (
        406, pre + "invalid arg 'x-max-priority' for queue '%s' in vhost '/' of queue type "
        "rabbit_quorum_queue" % n)
    for arg, value in [("x-queue-mode", "lazy"), ("x-queue-version", 2), ("x-max-age", "1D")]:
        assert declare_error(conn, n, **{arg: value}) == (
            406, pre + "invalid arg '%s' for queue '%s' in vhost '/' of queue type "
            "rabbit_quorum_queue" % (arg, n))
    assert declare_error(conn, "") == (
        406, pre + "Cannot declare a server-named queue for type rabbit_quorum_queue")
    # Accepted: the arguments quorum queues share with classic ones, and their own.
    assert declare_error(conn, n, **{"x-message-ttl": 1000, "x-max-length": 10,
                                     "x-overflow": "reject-publish-dlx",
                                     "x-dead-letter-exchange": "dlx",
                                     "x-dead-letter-strategy": "at-least-once",
                                     "x-quorum-initial-group-size": 3,
                                     "x-single-active-consumer": True}) is None
    conn.close()


def test_redeclare_texts():
    conn = connect()
    n = uniq("qq")
    ch = conn.channel()
    ch.queue_declare(n, durable=True, arguments={"x-queue-type": "quorum"})
    for args, text in [
        ({"x-queue-type": "classic"}, "received 'classic' but current is 'quorum'"),
        ({}, "received none but current is the value 'quorum' of type 'longstr'"),
    ]:
        c = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            c.queue_declare(n, durable=True, arguments=args)
        assert (e.value.reply_code, e.value.reply_text) == (
            406, "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '%s' in "
            "vhost '/': %s" % (n, text))
    ch.queue_delete(n)
    conn.close()


def headers_of(props):
    return dict(props.headers or {})


def test_delivery_count_and_delivery_limit_dead_lettering():
    """x-delivery-count on every basic.get (0 first); with x-delivery-limit 2 the message is
    delivered 3 times and the 3rd return dead-letters it (reason delivery_limit), without the
    x-delivery-count header."""
    conn = connect()
    ch = conn.channel()
    q, dlq = uniq("qq-lim"), uniq("dlq")
    ch.queue_declare(dlq, durable=True)
    ch.queue_declare(q, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 2,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.basic_publish("", q, b"poison", pika.BasicProperties(headers={"z": 1, "a": 2}))
    counts = []
    for _ in range(3):
        method, props, body = None, None, None
        for _ in range(100):
            method, props, body = ch.basic_get(q)
            if method:
                break
        assert method is not None
        counts.append(headers_of(props).get("x-delivery-count"))
        assert headers_of(props)["z"] == 1
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert counts == [0, 1, 2]
    dead = None
    for _ in range(100):
        dead = ch.basic_get(dlq, auto_ack=True)
        if dead[0]:
            break
    method, props, body = dead
    assert body == b"poison"
    h = headers_of(props)
    assert "x-delivery-count" not in h
    assert h["x-death"][0]["reason"] == "delivery_limit"
    assert h["x-death"][0]["queue"] == q
    assert h["x-first-death-reason"] == "delivery_limit"
    ch.queue_delete(q)
    ch.queue_delete(dlq)
    conn.close()


def test_global_qos_is_a_connection_error():
    conn = connect()
    ch = conn.channel()
    q = uniq("qq-qos")
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    ch.basic_qos(prefetch_count=10, global_qos=True)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        ch.basic_consume(q, lambda *a: None)
    assert (e.value.reply_code, e.value.reply_text) == (
        540, "NOT_IMPLEMENTED - queue '%s' in vhost '/' does not support global qos" % q)
    conn = connect()
    conn.channel().queue_delete(q)
    conn.close()


@pytest.mark.skipif(EXTERNAL, reason="restarts its own broker")
def test_transient_messages_survive_a_restart_in_a_quorum_queue():
    data = tempfile.mkdtemp(prefix="warren-quorum-")
    proc, port = start(data)
    try:
        conn = connect(port)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("jobs", durable=True, arguments={"x-queue-type": "quorum"})
        ch.basic_publish("", "jobs", b"transient", pika.BasicProperties(delivery_mode=1))
        ch.basic_publish("", "jobs", b"no-properties")
        conn.close()
    finally:
        proc.send_signal(signal.SIGKILL)  # kill -9: only what was synced may survive
        proc.wait()
    proc, port = start(data)
    try:
        conn = connect(port)
        ch = conn.channel()
        got = []
        while True:
            method, props, body = ch.basic_get("jobs", auto_ack=True)
            if not method:
                break
            got.append(body)
        assert got == [b"transient", b"no-properties"]
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        subprocess.run(["rm", "-rf", data])
