"""Consuming: competing consumers, prefetch, ack/nack/reject/recover, redelivery after a dropped
connection, basic.get, publisher confirms, transactions, consumer cancel notification, consumer
errors (exclusive 403, duplicate tag 530, unknown delivery tag 406), consumer priorities and
single active consumer.

Every behaviour asserted here was first checked against RabbitMQ 3.10.8 (127.0.0.1:5680); reply
codes and texts quoted in the asserts are RabbitMQ's, recorded from that broker:
    WARREN_EXTERNAL=1 WARREN_PORT=5680 /tmp/venv/bin/python -m pytest test_consume.py

Every wait is bounded: `pump()` runs process_data_events in short slices until a condition
holds or a deadline passes; raw sockets use read timeouts. No bare sleeps.
Queues are uuid-named; shared ones are deleted by the `queues` fixture.
"""
import os
import socket
import struct
import sys
import time
import uuid

import pika
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import amqp_raw as a  # noqa: E402

HOST = "127.0.0.1"
TIMEOUT = 10.0


def params(port, **kw):
    return pika.ConnectionParameters(HOST, port, connection_attempts=1, socket_timeout=5,
                                     blocked_connection_timeout=5, **kw)


def uniq(prefix="q"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def pump(conns, cond, timeout=TIMEOUT, what="condition"):
    """Run the I/O loops of `conns` (a connection or a list) until cond() is true."""
    if not isinstance(conns, (list, tuple)):
        conns = [conns]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        for c in conns:
            c.process_data_events(time_limit=0.02)


def settle(conns, seconds):
    """Keep processing events for `seconds` (to show that nothing more arrives)."""
    if not isinstance(conns, (list, tuple)):
        conns = [conns]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in conns:
            c.process_data_events(time_limit=0.02)


def close_quietly(conn):
    try:
        if conn is not None and conn.is_open:
            conn.close()
    except Exception:
        pass


@pytest.fixture
def conn(port):
    c = pika.BlockingConnection(params(port))
    yield c
    close_quietly(c)


@pytest.fixture
def queues(port):
    """Call queues(**declare_kwargs) -> a fresh uuid-named, non-exclusive queue; all deleted at
    teardown from a fresh connection."""
    names = []
    c = pika.BlockingConnection(params(port))
    ch = c.channel()

    def make(prefix="q", **kw):
        name = uniq(prefix)
        ch.queue_declare(name, **kw)
        names.append(name)
        return name

    yield make
    try:
        if c.is_closed:
            c = pika.BlockingConnection(params(port))
        ch = c.channel()
        for n in names:
            ch.queue_delete(n)
    finally:
        close_quietly(c)


def publish(port, queue, bodies, exchange="", properties=None):
    """Publish bodies to the default exchange with confirms (every one enqueued on return)."""
    c = pika.BlockingConnection(params(port))
    try:
        ch = c.channel()
        ch.confirm_delivery()
        for b in bodies:
            ch.basic_publish(exchange, queue, b if isinstance(b, bytes) else str(b).encode(),
                             properties)
    finally:
        c.close()


def ready_count(port, queue, expect=None, timeout=5):
    """Ready-message count from a passive queue.declare on a fresh connection. With `expect`,
    poll (bounded) until the count equals it: requeues and cross-connection effects are
    asynchronous in RabbitMQ too."""
    c = pika.BlockingConnection(params(port))
    try:
        ch = c.channel()
        deadline = time.monotonic() + timeout
        while True:
            n = ch.queue_declare(queue, passive=True).method.message_count
            if expect is None or n == expect or time.monotonic() > deadline:
                return n
            c.process_data_events(time_limit=0.05)
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# Raw-socket helpers (basic.consume / basic.deliver / basic.ack by hand)
# ---------------------------------------------------------------------------------------------

def raw_open(port, channel=1):
    s = a.connect(port, HOST, 5)
    a.handshake(s, timeout=5)
    a.open_channel(s, channel, timeout=5)
    return s


def raw_call(sock, frame, reply, timeout=5):
    """Send a method frame, return the reply Frame (or the close Frame if one came instead)."""
    sock.sendall(frame)
    r = a.read_frames(sock, timeout, until=lambda f: f.type == a.FRAME_METHOD and (
        (f.class_id, f.method_id) == reply or a.is_close(f)))
    assert r.stopped, "no reply %r: %r" % (reply, r)
    return r.frames[-1]


def raw_consume(channel, queue, tag="", no_ack=False, exclusive=False, arguments=None):
    return a.method_frame(channel, 60, 20, a.short(0) + a.shortstr(queue) + a.shortstr(tag)
                          + a.bits(False, no_ack, exclusive, False) + a.table(arguments))


def raw_ack(channel, tag, multiple=False):
    return a.method_frame(channel, 60, 80, a.longlong(tag) + a.bits(multiple))


def parse_deliver(payload):
    off = 4
    ctag, off = a._dec_shortstr(payload, off)
    (dtag,) = struct.unpack_from(">Q", payload, off)
    redelivered = bool(payload[off + 8] & 1)
    return ctag.decode(), dtag, redelivered


def raw_read_deliveries(sock, count, timeout=5):
    """Read frames until `count` complete basic.deliver messages arrived (or timeout) ->
    list of dicts(tag, redelivered, body). Other frames are ignored."""
    out = []
    cur = None
    deadline = time.monotonic() + timeout
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        r = a.read_frames(sock, remaining, until=lambda f: True)
        if not r.stopped:
            break
        f = r.frames[-1]
        if f.type == a.FRAME_METHOD and (f.class_id, f.method_id) == (60, 60):
            _, dtag, red = parse_deliver(f.payload)
            cur = {"tag": dtag, "redelivered": red, "body": b"", "size": None}
        elif f.type == a.FRAME_METHOD and a.is_close(f):
            raise AssertionError("broker closed: %s" % f)
        elif f.type == a.FRAME_HEADER and cur is not None:
            (cur["size"],) = struct.unpack_from(">Q", f.payload, 4)
            if cur["size"] == 0:
                out.append(cur)
                cur = None
        elif f.type == a.FRAME_BODY and cur is not None:
            cur["body"] += f.payload
            if len(cur["body"]) >= cur["size"]:
                out.append(cur)
                cur = None
    return out


# ---------------------------------------------------------------------------------------------
# Competing consumers and prefetch
# ---------------------------------------------------------------------------------------------

def test_competing_consumers_round_robin(port, conn, queues):
    q = queues("compete")
    got = {0: [], 1: [], 2: []}
    channels = []
    for i in range(3):
        ch = conn.channel()

        def on_msg(ch, m, p, b, i=i):
            got[i].append(int(b))
            ch.basic_ack(m.delivery_tag)

        ch.basic_consume(q, on_msg)
        channels.append(ch)
    publish(port, q, range(300))
    pump(conn, lambda: sum(map(len, got.values())) >= 300, what="300 deliveries")
    settle(conn, 0.3)
    every = sorted(got[0] + got[1] + got[2])
    assert every == list(range(300)), "each message exactly once"
    # RabbitMQ: strict rotation, 100 each, and no consumer gets two consecutive messages
    assert [len(got[i]) for i in range(3)] == [100, 100, 100]
    # strict rotation: consumer i gets exactly the messages k with k % 3 == r_i
    residues = sorted(set(b % 3 for b in got[i]) for i in range(3))
    assert residues == [{0}, {1}, {2}], {i: got[i][:12] for i in range(3)}
    for i in range(3):
        assert got[i] == sorted(got[i]), "each consumer sees the queue order"
    assert ready_count(port, q, expect=0) == 0


def test_prefetch_never_exceeded(port, conn, queues):
    q = queues("prefetch")
    n = 200
    pending = {0: [], 1: []}
    max_seen = {0: 0, 1: 0}
    violations = []
    bodies = []
    chans = []
    for i in (0, 1):
        ch = conn.channel()
        ch.basic_qos(prefetch_count=5)

        def on_msg(ch, m, p, b, i=i):
            pending[i].append(m.delivery_tag)
            bodies.append(int(b))
            max_seen[i] = max(max_seen[i], len(pending[i]))
            if len(pending[i]) > 5:
                violations.append((i, len(pending[i])))

        ch.basic_consume(q, on_msg)
        chans.append(ch)
    publish(port, q, range(n))
    deadline = time.monotonic() + 20
    while len(bodies) < n:
        assert time.monotonic() < deadline, "only %d of %d delivered" % (len(bodies), n)
        conn.process_data_events(time_limit=0.01)
        for i in (0, 1):
            # hold messages until the limit is reached, then ack the oldest one
            if len(pending[i]) >= 5 or (pending[i] and len(bodies) >= n - 10):
                chans[i].basic_ack(pending[i].pop(0))
    for i in (0, 1):
        while pending[i]:
            chans[i].basic_ack(pending[i].pop(0))
    settle(conn, 0.2)
    assert violations == []
    assert max_seen == {0: 5, 1: 5}, "the limit was actually reached on both channels"
    assert sorted(bodies) == list(range(n))


def test_prefetch_with_multiple_ack_releases_window(port, conn, queues):
    q = queues("prefetch-multi")
    publish(port, q, range(20))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=4)
    seen = []
    ch.basic_consume(q, lambda c, m, p, b: seen.append((m.delivery_tag, int(b))))
    pump(conn, lambda: len(seen) >= 4)
    settle(conn, 0.3)
    assert [b for _, b in seen] == [0, 1, 2, 3]
    ch.basic_ack(seen[2][0], multiple=True)  # acks tags 1..3
    pump(conn, lambda: len(seen) >= 7)
    settle(conn, 0.3)
    assert [b for _, b in seen] == [0, 1, 2, 3, 4, 5, 6]
    ch.basic_ack(0, multiple=True)  # delivery-tag 0 + multiple: everything outstanding
    pump(conn, lambda: len(seen) >= 11)
    settle(conn, 0.3)
    assert [b for _, b in seen] == list(range(11))


# ---------------------------------------------------------------------------------------------
# ack / nack / reject / recover
# ---------------------------------------------------------------------------------------------

def test_nack_and_reject_requeue_come_back_first_in_order(port, conn, queues):
    q = queues("requeue")
    publish(port, q, range(10))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=5)
    seen = []
    ch.basic_consume(q, lambda c, m, p, b: seen.append((m.delivery_tag, int(b), m.redelivered)))
    pump(conn, lambda: len(seen) >= 5)
    settle(conn, 0.2)
    assert [(b, r) for _, b, r in seen] == [(i, False) for i in range(5)]
    tags = {b: t for t, b, _ in seen}
    ch.basic_cancel(ch.consumer_tags[0])  # park the consumer so requeues cannot race deliveries
    ch.basic_ack(tags[0])
    ch.basic_reject(tags[3], requeue=True)
    ch.basic_nack(tags[1], multiple=False, requeue=True)
    ch.basic_qos(prefetch_count=5)  # round trip: the requeues are done
    # requeued messages go back to the head of the queue in their original order: 1, 3 before 5
    ch.basic_consume(q, lambda c, m, p, b: seen.append((m.delivery_tag, int(b), m.redelivered)))
    pump(conn, lambda: len(seen) >= 8)
    assert [(b, r) for _, b, r in seen[5:8]] == [(1, True), (3, True), (5, False)]
    # ack everything outstanding; the rest arrive fresh, not redelivered
    ch.basic_ack(0, multiple=True)
    pump(conn, lambda: len(seen) >= 12)
    settle(conn, 0.2)
    assert [(b, r) for _, b, r in seen[5:]] == [(1, True), (3, True)] + [
        (i, False) for i in range(5, 10)]
    ch.basic_ack(0, multiple=True)
    new_tags = [t for t, _, _ in seen]
    assert new_tags == list(range(1, 13)), "delivery tags are per channel and never reused"


def test_nack_multiple_requeue_and_discard(port, conn, queues):
    q = queues("nackmulti")
    publish(port, q, range(6))
    ch = conn.channel()
    got = [ch.basic_get(q) for _ in range(4)]
    assert [int(b) for _, _, b in got] == [0, 1, 2, 3]
    assert [m.message_count for m, _, _ in got] == [5, 4, 3, 2]
    ch.basic_nack(got[2][0].delivery_tag, multiple=True, requeue=True)  # 0, 1, 2 requeued
    ch.basic_reject(got[3][0].delivery_tag, requeue=False)  # 3 dropped (no DLX)
    again = []
    while True:
        m, p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            break
        again.append((int(b), m.redelivered))
    assert again == [(0, True), (1, True), (2, True), (4, False), (5, False)]
    # nack requeue=false drops too
    publish(port, q, [b"x"])
    m, _, _ = ch.basic_get(q)
    ch.basic_nack(m.delivery_tag, requeue=False)
    assert ch.basic_get(q) == (None, None, None)


def test_basic_recover_requeue_redelivers(port, conn, queues):
    q = queues("recover")
    publish(port, q, range(3))
    ch = conn.channel()
    seen = []
    ch.basic_consume(q, lambda c, m, p, b: seen.append((int(b), m.redelivered, m.delivery_tag)))
    pump(conn, lambda: len(seen) >= 3)
    ch.basic_recover(requeue=True)
    pump(conn, lambda: len(seen) >= 6, what="redelivery after basic.recover")
    assert [(b, r) for b, r, _ in seen] == [(0, False), (1, False), (2, False),
                                            (0, True), (1, True), (2, True)]
    assert [t for _, _, t in seen] == [1, 2, 3, 4, 5, 6]
    # the old tags are gone: acking them is an error only for tags never issued, so ack the new
    ch.basic_ack(6, multiple=True)
    settle(conn, 0.2)
    assert ready_count(port, q, expect=0) == 0


def test_basic_recover_without_requeue_is_not_implemented(port, conn, queues):
    q = queues("recover-false")
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        ch.basic_recover(requeue=False)
    assert (e.value.reply_code, e.value.reply_text) == (540, "NOT_IMPLEMENTED - requeue=false")


# ---------------------------------------------------------------------------------------------
# Redelivery after a dropped connection
# ---------------------------------------------------------------------------------------------

def test_dropped_connection_redelivers_unacked_to_survivor(port, conn, queues):
    q = queues("drop")
    n = 100
    publish(port, q, range(n))
    # consumer A on a raw socket: prefetch 10, ack the first three, then vanish mid-stream
    s = raw_open(port)
    try:
        assert raw_call(s, a.basic_qos(1, prefetch_count=10), (60, 11)).method_id == 11
        ok = raw_call(s, raw_consume(1, q, "A"), (60, 21))
        assert (ok.class_id, ok.method_id) == (60, 21), ok
        first = raw_read_deliveries(s, 10)
        assert len(first) == 10
        assert [int(d["body"]) for d in first] == list(range(10))
        assert not any(d["redelivered"] for d in first)
        acked_by_a = {int(d["body"]) for d in first[:3]}
        s.sendall(raw_ack(1, first[2]["tag"], multiple=True))
        more = raw_read_deliveries(s, 3, timeout=5)  # the window refills
        assert len(more) == 3
        seen_by_a = {int(d["body"]) for d in first + more}
        # half a frame, then an abortive close (RST)
        s.sendall(a.basic_publish(1, "", q)[:9])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        s.close()
    # consumer B (survivor) takes everything that is left
    ch = conn.channel()
    ch.basic_qos(prefetch_count=20)
    got = []

    def on_msg(c, m, p, b):
        got.append((int(b), m.redelivered))
        c.basic_ack(m.delivery_tag)

    ch.basic_consume(q, on_msg)
    pump(conn, lambda: len(got) >= n - len(acked_by_a), what="all unacked messages at B")
    settle(conn, 0.3)
    bodies = [b for b, _ in got]
    assert len(bodies) == len(set(bodies)), "no duplicates at B"
    assert sorted(bodies + sorted(acked_by_a)) == list(range(n)), "nothing lost"
    assert not (set(bodies) & acked_by_a), "acked messages are never redelivered"
    red = {b for b, r in got if r}
    assert seen_by_a - acked_by_a <= red, "every message A held comes back redelivered=True"
    assert red <= seen_by_a | set(range(max(seen_by_a) + 1, n)), red
    # the unacked ones come back first, in their original order
    assert [b for b, _ in got[:len(seen_by_a - acked_by_a)]] == sorted(seen_by_a - acked_by_a)
    assert ready_count(port, q, expect=0) == 0


def test_channel_close_requeues_unacked(port, conn, queues):
    q = queues("chclose")
    publish(port, q, range(5))
    ch = conn.channel()
    seen = []
    ch.basic_consume(q, lambda c, m, p, b: seen.append(int(b)))
    pump(conn, lambda: len(seen) >= 5)
    ch.basic_ack(2, multiple=True)  # 0 and 1 acked
    ch.close()
    ch2 = conn.channel()
    got = []
    while True:
        m, p, b = ch2.basic_get(q, auto_ack=True)
        if m is None:
            break
        got.append((int(b), m.redelivered))
    assert got == [(2, True), (3, True), (4, True)]


# ---------------------------------------------------------------------------------------------
# basic.get
# ---------------------------------------------------------------------------------------------

def test_basic_get_message_count_and_get_empty(port, conn, queues):
    q = queues("get")
    ch = conn.channel()
    assert ch.basic_get(q) == (None, None, None)  # get-empty
    publish(port, q, ["m%d" % i for i in range(5)],
            properties=pika.BasicProperties(content_type="text/plain", headers={"k": "v"}))
    assert ready_count(port, q, expect=5) == 5
    results = []
    for _ in range(5):
        m, p, b = ch.basic_get(q)
        results.append((m.delivery_tag, m.redelivered, m.exchange, m.routing_key,
                        m.message_count, b, p.content_type, p.headers))
    assert results == [(i + 1, False, "", q, 4 - i, b"m%d" % i, "text/plain", {"k": "v"})
                       for i in range(5)]
    assert ch.basic_get(q) == (None, None, None)
    # unacked messages are not counted as ready
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.basic_nack(5, multiple=True, requeue=True)
    assert ready_count(port, q, expect=5) == 5
    m, _, b = ch.basic_get(q, auto_ack=True)
    assert (b, m.redelivered, m.message_count, m.delivery_tag) == (b"m0", True, 4, 6)


def test_basic_get_missing_queue_404(conn):
    ch = conn.channel()
    name = uniq("missing")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_get(name)
    assert e.value.reply_code == 404
    assert e.value.reply_text == "NOT_FOUND - no queue '%s' in vhost '/'" % name


# ---------------------------------------------------------------------------------------------
# Publisher confirms
# ---------------------------------------------------------------------------------------------

def test_publisher_confirms_10000_pika(port, conn, queues):
    q = queues("confirm10k")
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(10000):
        ch.basic_publish("", q, b"%d" % i)  # raises unless the broker acked it
    assert ready_count(port, q, expect=10000) == 10000


def test_publisher_confirms_10000_pipelined(port, queues):
    """10,000 publishes without waiting: every tag 1..10000 is acked exactly once, no nacks."""
    q = queues("confirm10k-raw")
    s = raw_open(port)
    try:
        ok = raw_call(s, a.method_frame(1, 85, 10, a.bits(False)), (85, 11))
        assert (ok.class_id, ok.method_id) == (85, 11)
        s.sendall(b"".join(a.publish_message(1, b"%d" % i, "", q) for i in range(10000)))
        confirmed = 0
        singles = set()
        deadline = time.monotonic() + 30
        while confirmed < 10000:
            r = a.read_frames(s, max(0.1, deadline - time.monotonic()),
                              until=lambda f: f.type == a.FRAME_METHOD)
            assert r.stopped, "only %d confirmed: %r" % (confirmed, r)
            f = r.frames[-1]
            assert (f.class_id, f.method_id) == (60, 80), "not a basic.ack: %s" % f
            (tag,) = struct.unpack_from(">Q", f.payload, 4)
            multiple = bool(f.payload[12] & 1)
            assert tag > confirmed or (not multiple and tag not in singles and tag > 0)
            if multiple:
                assert tag > confirmed
                confirmed = tag
            else:
                singles.add(tag)
                while confirmed + 1 in singles:
                    confirmed += 1
            assert confirmed <= 10000
        assert confirmed == 10000
        r = a.read_frames(s, 0.3)
        assert not [f for f in r.frames if f.type == a.FRAME_METHOD], r
    finally:
        a.close_connection(s)
    assert ready_count(port, q, expect=10000) == 10000


def test_unroutable_mandatory_with_confirms(port, queues):
    """basic.return comes before the basic.ack of the same publish; the message is acked (not
    nacked); a non-mandatory unroutable publish is simply acked."""
    ex = uniq("ex")
    c = pika.BlockingConnection(params(port))
    try:
        c.channel().exchange_declare(ex, "direct")
        s = raw_open(port)
        try:
            raw_call(s, a.method_frame(1, 85, 10, a.bits(False)), (85, 11))
            s.sendall(a.publish_message(1, b"lost", ex, "nowhere", mandatory=True)
                      + a.publish_message(1, b"quiet", ex, "nowhere")
                      + a.publish_message(1, b"lost2", ex, "nowhere", mandatory=True))
            # acks may be coalesced (multiple=true); RabbitMQ 3.10.8 happened to send
            # return(lost), ack 1, ack 2, return(lost2), ack 3
            confirmed = 0
            events = []
            deadline = time.monotonic() + 5
            while confirmed < 3:
                r = a.read_frames(s, max(0.1, deadline - time.monotonic()),
                                  until=lambda f: f.type in (a.FRAME_METHOD, a.FRAME_BODY))
                assert r.stopped, "confirmed %d of 3; %s; %r" % (confirmed, events, r)
                f = r.frames[-1]
                if f.type == a.FRAME_BODY:
                    events.append(("body", f.payload))
                    assert f.payload in (b"lost", b"lost2"), events
                    tag = {b"lost": 1, b"lost2": 3}[f.payload]
                    assert confirmed < tag, "returned after its ack: %s" % events
                elif (f.class_id, f.method_id) == (60, 50):
                    (code,) = struct.unpack_from(">H", f.payload, 4)
                    text, _ = a._dec_shortstr(f.payload, 6)
                    events.append(("return", code, text.decode()))
                    assert (code, text) == (312, b"NO_ROUTE"), events
                elif (f.class_id, f.method_id) == (60, 80):
                    (tag,) = struct.unpack_from(">Q", f.payload, 4)
                    multiple = bool(f.payload[12] & 1)
                    events.append(("ack", tag, multiple))
                    assert tag == confirmed + 1 or (multiple and tag > confirmed), events
                    confirmed = tag
                else:
                    raise AssertionError("unexpected %s after %s" % (f, events))
            assert [e for e in events if e[0] == "body"] == [("body", b"lost"), ("body", b"lost2")]
            assert confirmed == 3
            r = a.read_frames(s, 0.3)
            assert not [f for f in r.frames if f.type == a.FRAME_METHOD], r
        finally:
            a.close_connection(s)
        # and through pika: UnroutableError carries the returned message
        ch = c.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.UnroutableError) as e:
            ch.basic_publish(ex, "nowhere", b"pika-lost", mandatory=True)
        [ret] = e.value.messages
        assert (ret.method.reply_code, ret.method.reply_text, ret.method.exchange,
                ret.method.routing_key, ret.body) == (312, "NO_ROUTE", ex, "nowhere", b"pika-lost")
        ch.basic_publish(ex, "nowhere", b"not-mandatory")  # acked, no exception
    finally:
        try:
            c.channel().exchange_delete(ex)
        finally:
            close_quietly(c)


def test_confirm_publish_to_missing_exchange_closes_channel(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    name = uniq("missing")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish(name, "k", b"x")
    assert (e.value.reply_code, e.value.reply_text) == (
        404, "NOT_FOUND - no exchange '%s' in vhost '/'" % name)


# ---------------------------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------------------------

def test_tx_commit_and_rollback(port, conn, queues):
    q = queues("tx")
    ch = conn.channel()
    ch.tx_select()
    for b in (b"a", b"b", b"c"):
        ch.basic_publish("", q, b)
    assert ready_count(port, q) == 0, "nothing visible before commit"
    ch.tx_commit()
    assert ready_count(port, q, expect=3) == 3
    ch.basic_publish("", q, b"d")
    ch.basic_publish("", q, b"e")
    ch.tx_rollback()
    assert ready_count(port, q, expect=3) == 3
    ch.tx_commit()  # an empty commit after rollback is fine
    assert ready_count(port, q, expect=3) == 3
    # acks inside a transaction: rolled back acks leave the messages unacked
    m1, _, b1 = ch.basic_get(q)
    m2, _, b2 = ch.basic_get(q)
    assert (b1, b2) == (b"a", b"b")
    ch.basic_ack(m2.delivery_tag, multiple=True)
    ch.tx_rollback()
    ch.close()  # the still-unacked a, b are requeued
    assert ready_count(port, q, expect=3) == 3
    ch = conn.channel()
    ch.tx_select()
    got = [ch.basic_get(q) for _ in range(3)]
    assert [(b, m.redelivered) for m, _, b in got] == [(b"a", True), (b"b", True), (b"c", False)]
    ch.basic_ack(got[1][0].delivery_tag, multiple=True)  # a, b
    ch.basic_reject(got[2][0].delivery_tag, requeue=True)  # c
    assert ready_count(port, q, expect=0) == 0, "acks/rejects take effect only on commit"
    ch.tx_commit()
    assert ready_count(port, q, expect=1) == 1
    m, _, b = ch.basic_get(q, auto_ack=True)
    assert (b, m.redelivered) == (b"c", True)
    ch.tx_commit()


def test_tx_errors(conn):
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.tx_commit()
    assert (e.value.reply_code, e.value.reply_text) == (
        406, "PRECONDITION_FAILED - channel is not transactional")
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.tx_rollback()
    assert (e.value.reply_code, e.value.reply_text) == (
        406, "PRECONDITION_FAILED - channel is not transactional")
    ch = conn.channel()
    ch.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.confirm_delivery()
    assert (e.value.reply_code, e.value.reply_text) == (
        406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode")
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.tx_select()
    assert (e.value.reply_code, e.value.reply_text) == (
        406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode")


# ---------------------------------------------------------------------------------------------
# Consumer lifecycle and errors
# ---------------------------------------------------------------------------------------------

def test_queue_deleted_sends_consumer_cancel(port, conn):
    q = uniq("cancelme")
    ch = conn.channel()
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method))
    tag = ch.basic_consume(q, lambda *args: None, consumer_tag="ctag-1")
    assert tag == "ctag-1"
    other = pika.BlockingConnection(params(port))
    try:
        other.channel().queue_delete(q)
    finally:
        other.close()
    pump(conn, lambda: cancelled, what="basic.cancel from the broker")
    assert cancelled[0].NAME == "Basic.Cancel"
    assert cancelled[0].consumer_tag == "ctag-1"
    assert ch.is_open, "the channel survives"
    ch.basic_qos(prefetch_count=1)  # still usable
    assert ch.consumer_tags == []


def test_exclusive_consumer_conflict_403(port, conn, queues):
    q = queues("exclusive")
    ch1 = conn.channel()
    ch1.basic_consume(q, lambda *args: None, exclusive=True)
    ch2 = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch2.basic_consume(q, lambda *args: None)
    assert (e.value.reply_code, e.value.reply_text) == (
        403, "ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use" % q)
    assert ch1.is_open
    # and the other way round: an existing consumer prevents an exclusive one
    q2 = queues("exclusive2")
    ch3 = conn.channel()
    ch3.basic_consume(q2, lambda *args: None)
    ch4 = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch4.basic_consume(q2, lambda *args: None, exclusive=True)
    assert (e.value.reply_code, e.value.reply_text) == (
        403, "ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use" % q2)


def test_duplicate_consumer_tag_530(port, conn, queues):
    q = queues("duptag")
    # the same tag on two different channels is fine (tags are channel-scoped)
    conn.channel().basic_consume(q, lambda *args: None, consumer_tag="dup")
    conn.channel().basic_consume(q, lambda *args: None, consumer_tag="dup")
    # on the same channel it is a connection error (pika refuses client-side, so go raw)
    s = raw_open(port)
    try:
        ok = raw_call(s, raw_consume(1, q, "dup"), (60, 21))
        assert (ok.class_id, ok.method_id) == (60, 21)
        f = raw_call(s, raw_consume(1, q, "dup"), (60, 21))
        assert f.channel == 0 and f.close == a.Close(
            530, "NOT_ALLOWED - attempt to reuse consumer tag 'dup'", 60, 20), f
        s.sendall(a.connection_close_ok())
        r = a.read_frames(s, 3)
        assert r.eof
    finally:
        s.close()


def test_unknown_delivery_tag_406(port, conn, queues):
    q = queues("badtag")
    ch = conn.channel()
    ch.basic_ack(42)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_qos(prefetch_count=1)
    assert (e.value.reply_code, e.value.reply_text) == (
        406, "PRECONDITION_FAILED - unknown delivery tag 42")
    # double ack
    publish(port, q, [b"x"])
    ch = conn.channel()
    m, _, _ = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag)
    ch.basic_ack(m.delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_qos(prefetch_count=1)
    assert (e.value.reply_code, e.value.reply_text) == (
        406, "PRECONDITION_FAILED - unknown delivery tag 1")
    # reject / nack of an unknown tag
    for op in ("reject", "nack"):
        ch = conn.channel()
        if op == "reject":
            ch.basic_reject(7)
        else:
            ch.basic_nack(7)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_qos(prefetch_count=1)
        assert (e.value.reply_code, e.value.reply_text) == (
            406, "PRECONDITION_FAILED - unknown delivery tag 7"), op
    assert conn.is_open


def test_ack_on_no_ack_consumer_delivery_is_unknown_tag(port, conn, queues):
    q = queues("noack")
    publish(port, q, [b"x"])
    ch = conn.channel()
    seen = []
    ch.basic_consume(q, lambda c, m, p, b: seen.append(m.delivery_tag), auto_ack=True)
    pump(conn, lambda: seen)
    ch.basic_ack(seen[0])
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_qos(prefetch_count=1)
    assert (e.value.reply_code, e.value.reply_text) == (
        406, "PRECONDITION_FAILED - unknown delivery tag 1")


def test_basic_cancel_stops_deliveries_and_keeps_unacked(port, conn, queues):
    q = queues("cancel")
    publish(port, q, range(3))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2)
    seen = []
    tag = ch.basic_consume(q, lambda c, m, p, b: seen.append((m.delivery_tag, int(b))))
    pump(conn, lambda: len(seen) >= 2)
    ch.basic_cancel(tag)
    settle(conn, 0.3)
    assert [b for _, b in seen] == [0, 1]
    assert ready_count(port, q, expect=1) == 1
    ch.basic_ack(seen[1][0], multiple=True)  # still ackable after the cancel
    ch.basic_qos(prefetch_count=2)
    assert ready_count(port, q, expect=1) == 1


# ---------------------------------------------------------------------------------------------
# Consumer priorities and single active consumer
# ---------------------------------------------------------------------------------------------

def test_consumer_priorities(port, conn, queues):
    q = queues("prio")
    hi, lo = conn.channel(), conn.channel()
    hi.basic_qos(prefetch_count=5)
    lo.basic_qos(prefetch_count=100)
    got_hi, got_lo = [], []
    hi.basic_consume(q, lambda c, m, p, b: got_hi.append((m.delivery_tag, int(b))),
                     arguments={"x-priority": 10})
    lo.basic_consume(q, lambda c, m, p, b: got_lo.append((m.delivery_tag, int(b))),
                     arguments={"x-priority": 1})
    publish(port, q, range(20))
    pump(conn, lambda: len(got_hi) + len(got_lo) >= 20)
    settle(conn, 0.2)
    # the high-priority consumer is served until its prefetch window is full
    assert [b for _, b in got_hi] == [0, 1, 2, 3, 4]
    assert [b for _, b in got_lo] == list(range(5, 20))
    hi.basic_ack(0, multiple=True)
    lo.basic_ack(0, multiple=True)
    # with capacity, the high-priority consumer gets everything
    got_hi[:] = []
    got_lo[:] = []

    def ack_hi(c, m, p, b):
        got_hi.append((m.delivery_tag, int(b)))
        c.basic_ack(m.delivery_tag)

    hi.basic_cancel(hi.consumer_tags[0])
    hi.basic_qos(prefetch_count=0)  # unlimited now
    hi.basic_consume(q, ack_hi, arguments={"x-priority": 10})
    publish(port, q, range(100, 110))
    pump(conn, lambda: len(got_hi) + len(got_lo) >= 10)
    settle(conn, 0.2)
    assert [b for _, b in got_hi] == list(range(100, 110))
    assert got_lo == []


def test_single_active_consumer_failover(port, queues):
    q = queues("sac", arguments={"x-single-active-consumer": True})
    c1 = pika.BlockingConnection(params(port))
    c2 = pika.BlockingConnection(params(port))
    try:
        ch1, ch2 = c1.channel(), c2.channel()
        ch1.basic_qos(prefetch_count=10)
        ch2.basic_qos(prefetch_count=10)
        got1, got2 = [], []
        ch1.basic_consume(q, lambda c, m, p, b: got1.append((m.delivery_tag, int(b), m.redelivered)))
        ch2.basic_consume(q, lambda c, m, p, b: got2.append((m.delivery_tag, int(b), m.redelivered)))
        publish(port, q, range(20))
        pump([c1, c2], lambda: len(got1) >= 10)
        settle([c1, c2], 0.3)
        assert [b for _, b, _ in got1] == list(range(10))
        assert got2 == [], "the second consumer stays idle while the first is active"
        ch1.basic_ack(got1[3][0], multiple=True)  # 0..3 done
        pump([c1, c2], lambda: len(got1) >= 14)
        settle([c1, c2], 0.2)
        assert got2 == []
        c1.close()  # 4..13 unacked -> requeued -> consumer 2 takes over
        pump(c2, lambda: len(got2) >= 10, what="failover to the second consumer")
        settle(c2, 0.2)
        assert [(b, r) for _, b, r in got2] == [(i, True) for i in range(4, 14)]
        ch2.basic_ack(0, multiple=True)
        pump(c2, lambda: len(got2) >= 16)
        settle(c2, 0.2)
        assert [(b, r) for _, b, r in got2[10:]] == [(i, False) for i in range(14, 20)]
        ch2.basic_ack(0, multiple=True)
    finally:
        close_quietly(c1)
        close_quietly(c2)


def test_single_active_consumer_cancel_hands_over(port, conn, queues):
    q = queues("sac2", arguments={"x-single-active-consumer": True})
    ch1, ch2 = conn.channel(), conn.channel()
    got1, got2 = [], []

    def ack_into(lst):
        def cb(c, m, p, b):
            lst.append(int(b))
            c.basic_ack(m.delivery_tag)
        return cb

    t1 = ch1.basic_consume(q, ack_into(got1))
    ch2.basic_consume(q, ack_into(got2))
    publish(port, q, range(5))
    pump(conn, lambda: len(got1) >= 5)
    ch1.basic_cancel(t1)
    publish(port, q, range(5, 10))
    pump(conn, lambda: len(got2) >= 5)
    settle(conn, 0.2)
    assert got1 == [0, 1, 2, 3, 4] and got2 == [5, 6, 7, 8, 9]


def test_single_active_consumer_exclusive_consume_refused(conn, queues):
    """An exclusive consumer on a single-active-consumer queue."""
    q = queues("sac3", arguments={"x-single-active-consumer": True})
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_consume(q, lambda *args: None, exclusive=True)
    assert e.value.reply_code in (403,)
    assert e.value.reply_text == ("ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use" % q)


# --- consumer timeout (RabbitMQ 3.10.8 text, recorded with consumer_timeout = 3000; the
# per-queue and per-consumer `x-consumer-timeout` arguments follow RabbitMQ 3.12+) -------------

CONSUMER_TIMEOUT_TEXT = ("PRECONDITION_FAILED - delivery acknowledgement on channel %d timed out. "
                         "Timeout value used: %d ms. This timeout value can be configured, see "
                         "consumers doc guide to learn more")


def test_consumer_timeout_closes_the_channel_and_redelivers(port):
    """A pika consumer that never acks: its channel is closed with RabbitMQ's 406 and the
    message goes to another consumer with redelivered=True; other channels are unaffected."""
    q = uniq("ctimeout")
    conn = pika.BlockingConnection(params(port))
    setup = conn.channel()
    setup.queue_declare(q, arguments={"x-consumer-timeout": 300})
    hung = conn.channel()
    got, closed = [], []
    hung._impl.add_on_close_callback(lambda ch, reason: closed.append(reason))
    hung.basic_consume(q, lambda ch, m, p, b: got.append((m.redelivered, b)))
    setup.basic_publish("", q, b"job")
    pump(conn, lambda: got, what="first delivery")
    assert got == [(False, b"job")]
    pump(conn, lambda: closed, what="consumer timeout")
    reason = closed[0]
    assert (reason.reply_code, reason.reply_text) == (406, CONSUMER_TIMEOUT_TEXT % (hung.channel_number, 300))
    # The other channel of the same connection still works, and gets the message back.
    again = []
    setup.basic_consume(q, lambda ch, m, p, b: (again.append((m.redelivered, b)),
                                                 ch.basic_ack(m.delivery_tag)))
    pump(conn, lambda: again, what="redelivery")
    assert again == [(True, b"job")]
    setup.queue_delete(q)
    conn.close()


def test_consumer_argument_overrides_the_queue(port):
    q = uniq("ctimeout")
    conn = pika.BlockingConnection(params(port))
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-consumer-timeout": 200})
    closed = []
    slow = conn.channel()
    slow._impl.add_on_close_callback(lambda c, reason: closed.append((reason, time.monotonic())))
    slow.basic_consume(q, lambda *a: None, arguments={"x-consumer-timeout": 1200})
    ch.basic_publish("", q, b"x")
    t0 = time.monotonic()
    pump(conn, lambda: closed, what="consumer timeout")
    reason, at = closed[0]
    assert reason.reply_text == CONSUMER_TIMEOUT_TEXT % (slow.channel_number, 1200)
    assert at - t0 >= 1.0
    ch.queue_delete(q)
    conn.close()
