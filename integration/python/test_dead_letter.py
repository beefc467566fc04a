"""Dead lettering and the queue features built on it: reject/nack to a dead-letter exchange
(the x-death table, x-first-death-*, CC handling, count merging), message TTL (queue and
per-message, invalid expirations, TTL 0), the delay-and-retry pattern, length limits and
overflow modes, dead-letter cycles, priority queues, x-delivery-limit and direct reply-to.

Every EXPECTED_* table below was recorded from a real RabbitMQ 3.10.8 (127.0.0.1:5680) with
    /tmp/venv/bin/python test_dead_letter.py record 5680 [EXPECTED_NAME ...]
and is what RabbitMQ actually did -- re-record rather than edit by hand. The tests run the same
observations against $WARREN_PORT and require identical results:
    WARREN_EXTERNAL=1 WARREN_PORT=5680 /tmp/venv/bin/python -m pytest test_dead_letter.py

How messages are rendered for comparison (see `msg()` / `norm()`):
  * uuid-named queues/exchanges are replaced by their symbolic names ("src", "dlq", ...), also
    inside reply texts and header values;
  * every integer inside a field table (headers, x-death entries) is recorded as a
    (type-tag, value) pair, e.g. ('l', 1) for RabbitMQ's signed 64-bit x-death count, so that
    a broker sending 'I' instead of 'l' is caught (Java clients cast x-death count to Long);
  * timestamps (x-death `time`) become '<now>' when within a minute of the local clock, and
    'BAD-TIME ...' otherwise.

Every wait is bounded (deadlines, process_data_events in short slices); queues and exchanges
are uuid-named and deleted at the end of each observation.
"""
import contextlib
import datetime
import functools
import pprint
import sys
import time
import uuid

import pika
import pika.data
import pika.exceptions
import pytest

HOST = "127.0.0.1"
TIMEOUT = 5.0


def params(port):
    return pika.ConnectionParameters(HOST, port, connection_attempts=1, socket_timeout=TIMEOUT,
                                     blocked_connection_timeout=TIMEOUT)


def uniq(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def close_quietly(conn):
    try:
        if conn is not None and conn.is_open:
            conn.close()
    except Exception:
        pass


# ---------------------------------------------------------------------------------------------
# Typed field-table decoding: pika folds every integer type into a Python int; while an
# observation runs, integers decoded from field tables carry their wire type tag.
# ---------------------------------------------------------------------------------------------

class TInt(int):
    tag = "?"


_orig_decode_value = pika.data.decode_value


def _typed_decode_value(encoded, offset):
    kind = encoded[offset:offset + 1]
    value, offset = _orig_decode_value(encoded, offset)
    if isinstance(value, int) and not isinstance(value, bool):
        value = TInt(value)
        value.tag = kind.decode("latin-1")
    return value, offset


@contextlib.contextmanager
def typed_tables():
    pika.data.decode_value = _typed_decode_value
    try:
        yield
    finally:
        pika.data.decode_value = _orig_decode_value


# ---------------------------------------------------------------------------------------------
# Session: one connection + channel, symbolic names, cleanup
# ---------------------------------------------------------------------------------------------

class Session(object):
    def __init__(self, port):
        self.port = port
        self.conn = pika.BlockingConnection(params(port))
        self.ch = self.conn.channel()
        self.exchanges = []
        self.queues = []
        self.alias = {}
        self.extra_conns = []

    def connection(self):
        c = pika.BlockingConnection(params(self.port))
        self.extra_conns.append(c)
        return c

    def name(self, symbolic, prefix=None):
        real = uniq(prefix or ("dl-" + symbolic))
        self.alias[real] = symbolic
        return real

    def exchange(self, symbolic, kind="direct", **kw):
        name = self.name(symbolic)
        self.ch.exchange_declare(name, kind, **kw)
        self.exchanges.append(name)
        return name

    def queue(self, symbolic, arguments=None, **kw):
        name = self.name(symbolic)
        self.queues.append(name)
        self.ch.queue_declare(name, arguments=arguments, **kw)
        return name

    def bind(self, queue, exchange, key=""):
        self.ch.queue_bind(queue, exchange, routing_key=key)

    def reopen(self):
        if self.conn.is_closed:
            self.conn = pika.BlockingConnection(params(self.port))
        if self.ch.is_closed:
            self.ch = self.conn.channel()
        return self.ch

    def count(self, queue):
        self.reopen()
        return self.ch.queue_declare(queue, passive=True).method.message_count

    def wait_count(self, queue, n, timeout=TIMEOUT):
        """Poll the ready count of `queue` until it equals n (bounded); returns the last count."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.count(queue)
            if c == n or time.monotonic() > deadline:
                return c
            self.conn.process_data_events(time_limit=0.02)

    def get(self, queue):
        self.reopen()
        m, p, b = self.ch.basic_get(queue, auto_ack=True)
        return None if m is None else self.msg(m, p, b)

    def drain(self, queue, limit=1000):
        out = []
        for _ in range(limit):
            r = self.get(queue)
            if r is None:
                return out
            out.append(r)
        raise AssertionError("queue never ran empty")

    def publish(self, exchange, key, body, confirm_ch=None, **props):
        ch = confirm_ch or self.ch
        ch.basic_publish(exchange, key, body.encode() if isinstance(body, str) else body,
                         pika.BasicProperties(**props))

    def pump(self, cond, timeout=TIMEOUT, conns=None):
        conns = conns or [self.conn]
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            for c in conns:
                c.process_data_events(time_limit=0.02)
        return True

    def settle(self, seconds, conns=None):
        conns = conns or [self.conn]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for c in conns:
                c.process_data_events(time_limit=0.02)

    # -- rendering ------------------------------------------------------------------------

    def sym(self, s):
        if isinstance(s, str):
            for real, symbolic in self.alias.items():
                if real in s:
                    s = s.replace(real, symbolic)
        return s

    def symall(self, v):
        """Replace real names by symbolic ones everywhere (keeps tuples as they are)."""
        if isinstance(v, str):
            return self.sym(v)
        if isinstance(v, dict):
            return {self.sym(k): self.symall(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.symall(x) for x in v]
        if isinstance(v, tuple):
            return tuple(self.symall(x) for x in v)
        return v

    def norm(self, v):
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, TInt):
            return (v.tag, int(v))
        if isinstance(v, int):
            return v
        if isinstance(v, datetime.datetime):
            now = datetime.datetime.utcnow()
            if abs((now - v).total_seconds()) <= 60:
                return "<now>"
            return "BAD-TIME %s (now %s)" % (v.isoformat(), now.isoformat())
        if isinstance(v, dict):
            return {self.sym(k): self.norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [self.norm(x) for x in v]
        if isinstance(v, str):
            return self.sym(v)
        return v

    def msg(self, m, p, b, with_meta=False):
        """A delivered/got message -> dict: body, routing key, exchange, properties."""
        props = {}
        for k in ("content_type", "content_encoding", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                  "type", "user_id", "app_id"):
            val = getattr(p, k)
            if val is not None:
                props[k] = val
        out = {"body": b.decode(errors="replace"), "rk": self.sym(m.routing_key),
               "x": self.sym(m.exchange)}
        if props:
            out["props"] = self.norm(props)
        headers = dict(p.headers or {})
        # Warren follows RabbitMQ 3.13+ and also sets x-last-death-* (docs/compatibility.md;
        # shared/docs/rabbitmq-semantics.md): check they agree with the newest x-death entry,
        # then compare the rest with the 3.10.8 recording.
        last = {k: headers.pop(k) for k in list(headers) if k.startswith("x-last-death-")}
        if last:
            newest = headers["x-death"][0]
            # (the exchange is the current death's; a merged x-death entry keeps its first)
            assert (last["x-last-death-reason"], last["x-last-death-queue"]) == \
                (newest["reason"], newest["queue"]), (last, newest)
            assert isinstance(last["x-last-death-exchange"], str)
        if headers:
            out["headers"] = self.norm(headers)
        if with_meta:
            out["redelivered"] = m.redelivered
        return out

    def close(self):
        for c in self.extra_conns:
            close_quietly(c)
        try:
            ch = self.reopen()
            for q in self.queues:
                ch.queue_delete(q)
            for x in self.exchanges:
                ch.exchange_delete(x)
        finally:
            close_quietly(self.conn)


def error_of(e):
    return [e.reply_code, e.reply_text]


def sessioned(fn):
    """observe_x(port) -> runs fn(session, out) with typed tables; returns out."""
    @functools.wraps(fn)
    def wrapper(port):
        with typed_tables():
            s = Session(port)
            out = {}
            try:
                fn(s, out)
            finally:
                s.close()
            return s.symall(out)
    return wrapper


def get_ack(s, queue):
    """basic.get with manual ack -> (delivery_tag, rendered message) or (None, None)."""
    m, p, b = s.ch.basic_get(queue, auto_ack=False)
    if m is None:
        return None, None
    return m.delivery_tag, s.msg(m, p, b)


# ---------------------------------------------------------------------------------------------
# 1. reject / nack to a dead-letter exchange
# ---------------------------------------------------------------------------------------------

FULL_PROPS = dict(content_type="text/plain", content_encoding="utf-8", delivery_mode=2,
                  priority=3, correlation_id="corr-1", reply_to="somewhere", expiration="60000",
                  message_id="mid-1", timestamp=1700000000, type="t1", app_id="app",
                  headers={"k": 1, "s": "v"})


@sessioned
def observe_reject(s, out):
    dlx = s.exchange("dlx", "direct")
    dlq = s.queue("dlq")
    dlq_key = s.queue("dlq_key")
    src = s.queue("src", arguments={"x-dead-letter-exchange": dlx})
    src_key = s.queue("src_key", arguments={"x-dead-letter-exchange": dlx,
                                            "x-dead-letter-routing-key": "dlk"})
    s.bind(dlq, dlx, src)
    s.bind(dlq_key, dlx, "dlk")
    s.ch.confirm_delivery()

    # reject requeue=false, all properties set (expiration must disappear)
    s.publish("", src, "r1", **FULL_PROPS)
    tag, _ = get_ack(s, src)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(dlq, 1)
    out["reject_full_props"] = s.drain(dlq)
    out["reject_src_left"] = s.count(src)

    # nack requeue=false with a dead-letter routing key
    s.publish("", src_key, "n1", headers={"k": 2})
    tag, _ = get_ack(s, src_key)
    s.ch.basic_nack(tag, multiple=False, requeue=False)
    s.wait_count(dlq_key, 1)
    out["nack_dl_routing_key"] = s.drain(dlq_key)

    # nack multiple: order in the DLQ
    for b in ("m1", "m2", "m3"):
        s.publish("", src, b)
    tags = [get_ack(s, src)[0] for _ in range(3)]
    s.ch.basic_nack(tags[-1], multiple=True, requeue=False)
    s.wait_count(dlq, 3)
    out["nack_multiple_order"] = [m["body"] for m in s.drain(dlq)]

    # rejected by a consumer (basic.deliver rather than basic.get)
    got = []
    ctag = s.ch.basic_consume(src, lambda ch, m, p, b: got.append(m.delivery_tag))
    s.publish("", src, "c1")
    s.pump(lambda: got)
    s.ch.basic_reject(got[0], requeue=False)
    s.ch.basic_cancel(ctag)
    s.wait_count(dlq, 1)
    out["consumer_reject"] = s.drain(dlq)

    # requeue=true does not dead-letter
    s.publish("", src, "rq")
    tag, _ = get_ack(s, src)
    s.ch.basic_reject(tag, requeue=True)
    out["requeue_true"] = [s.wait_count(src, 1), s.count(dlq)]
    s.drain(src)

    # dead-lettering to the default exchange with a DL routing key naming the DLQ
    viadef = s.queue("viadef", arguments={"x-dead-letter-exchange": "",
                                          "x-dead-letter-routing-key": dlq})
    s.publish("", viadef, "d1")
    tag, _ = get_ack(s, viadef)
    s.ch.basic_nack(tag, requeue=False)
    s.wait_count(dlq, 1)
    out["default_exchange_dlx"] = s.drain(dlq)

    # DLX that does not exist: the message is dropped
    missing = s.name("missing_x")
    nodlx = s.queue("nodlx", arguments={"x-dead-letter-exchange": missing})
    s.publish("", nodlx, "lost")
    tag, _ = get_ack(s, nodlx)
    s.ch.basic_reject(tag, requeue=False)
    s.settle(0.3)
    out["missing_dlx"] = [s.count(nodlx), s.count(dlq)]

    # published through a named exchange with a routing key that differs from the queue name
    work = s.exchange("work", "direct")
    s.bind(src, work, "wk")
    s.bind(dlq, dlx, "wk")
    s.publish(work, "wk", "viawork")
    tag, _ = get_ack(s, src)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(dlq, 1)
    out["named_exchange"] = s.drain(dlq)

    # no DLX configured: reject just drops
    plain = s.queue("plain")
    s.publish("", plain, "x")
    tag, _ = get_ack(s, plain)
    s.ch.basic_reject(tag, requeue=False)
    out["no_dlx_dropped"] = s.wait_count(plain, 0)

    # nothing left over anywhere
    out["dlqs_empty_at_end"] = [s.count(dlq), s.count(dlq_key), s.count(src), s.count(src_key)]


@sessioned
def observe_cc(s, out):
    ex = s.exchange("ex", "direct")
    dlx = s.exchange("dlx", "direct")
    s1 = s.queue("s1", arguments={"x-dead-letter-exchange": dlx})
    s2k = s.queue("s2k", arguments={"x-dead-letter-exchange": dlx,
                                    "x-dead-letter-routing-key": "dlk"})
    d1 = s.queue("d_k1")
    d2 = s.queue("d_k2")
    dk = s.queue("d_dlk")
    s.bind(s1, ex, "k1")
    s.bind(s2k, ex, "k3")
    s.bind(d1, dlx, "k1")
    s.bind(d2, dlx, "k2")
    s.bind(dk, dlx, "dlk")
    s.ch.confirm_delivery()

    def dests():
        return {"d_k1": s.drain(d1), "d_k2": s.drain(d2), "d_dlk": s.drain(dk)}

    # without a DL routing key: routed again with the original key and the CC keys
    s.publish(ex, "k1", "cc1", headers={"CC": ["k2"], "other": "x"})
    tag, _ = get_ack(s, s1)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(d2, 1)
    s.wait_count(d1, 1)
    out["cc_no_dl_key"] = dests()

    # with a DL routing key: CC removed, routed with the DL key only
    s.publish(ex, "k3", "cc2", headers={"CC": ["k2"], "other": "x"})
    tag, _ = get_ack(s, s2k)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(dk, 1)
    s.settle(0.1)
    out["cc_with_dl_key"] = dests()

    # BCC never survives publishing, so it is neither in headers nor in routing-keys
    s.publish(ex, "k1", "bcc1", headers={"BCC": ["k2"]})
    tag, _ = get_ack(s, s1)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(d1, 1)
    s.settle(0.1)
    out["bcc_no_dl_key"] = dests()

    # CC naming the source queue's own key twice plus another
    s.publish(ex, "k1", "cc3", headers={"CC": ["k2", "k1"]})
    tag, _ = get_ack(s, s1)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(d2, 1)
    s.wait_count(d1, 1)
    s.settle(0.1)
    out["cc_repeat_key"] = dests()


@sessioned
def observe_twice(s, out):
    """Dead-lettered more than once: count merging and entry order."""
    a = s.name("A")
    b = s.name("B")
    s.queues += [a, b]
    s.ch.queue_declare(a, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b})
    s.ch.queue_declare(b, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": a})
    s.ch.confirm_delivery()

    # round 1: expires in A (per-message expiration) -> B
    s.publish("", a, "twice", expiration="50", headers={"h": 1})
    s.wait_count(b, 1)
    tag, m = get_ack(s, b)
    out["1_after_A_expired"] = m
    # round 2: rejected from B -> A
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(a, 1)
    tag, m = get_ack(s, a)
    out["2_after_B_rejected"] = m
    # round 3: rejected from A -> B (new A/rejected entry: reason differs from A/expired)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(b, 1)
    tag, m = get_ack(s, b)
    out["3_after_A_rejected"] = m
    # round 4: rejected from B -> A (B/rejected merged: count 2, moved to the front)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(a, 1)
    tag, m = get_ack(s, a)
    out["4_after_B_rejected_again"] = m
    # round 5: rejected from A -> B (A/rejected count 2, to the front)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(b, 1)
    out["5_after_A_rejected_again"] = s.get(b)


@sessioned
def observe_two_queues(s, out):
    """Q1 -> Q2 -> DLQ through two different dead-letter exchanges: two entries, newest first."""
    dlx1 = s.exchange("dlx1", "fanout")
    dlx2 = s.exchange("dlx2", "topic")
    dlq = s.queue("dlq")
    q2 = s.queue("q2", arguments={"x-dead-letter-exchange": dlx2,
                                  "x-dead-letter-routing-key": "final.key"})
    q1 = s.queue("q1", arguments={"x-dead-letter-exchange": dlx1})
    s.bind(q2, dlx1)
    s.bind(dlq, dlx2, "final.#")
    s.ch.confirm_delivery()
    s.publish("", q1, "two", expiration="30000", headers={"CC": ["nobody"]})
    tag, _ = get_ack(s, q1)
    s.ch.basic_nack(tag, requeue=False)
    s.wait_count(q2, 1)
    tag, m = get_ack(s, q2)
    out["in_q2"] = m
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(dlq, 1)
    out["in_dlq"] = s.drain(dlq)


# ---------------------------------------------------------------------------------------------
# 2. TTL
# ---------------------------------------------------------------------------------------------

@sessioned
def observe_ttl(s, out):
    dlx = s.exchange("dlx", "fanout")
    dlq = s.queue("dlq")
    s.bind(dlq, dlx)
    s.ch.confirm_delivery()

    # queue TTL: expired messages are dead-lettered with reason expired, in order
    qttl = s.queue("qttl", arguments={"x-message-ttl": 100, "x-dead-letter-exchange": dlx})
    for b in ("t1", "t2", "t3"):
        s.publish("", qttl, b, headers={"n": b})
    out["queue_ttl_dlq_count"] = s.wait_count(dlq, 3)
    out["queue_ttl_src_count"] = s.wait_count(qttl, 0)
    out["queue_ttl_dead"] = s.drain(dlq)
    # never delivered afterwards: a consumer on the source gets nothing
    got = []
    s.ch.basic_consume(qttl, lambda ch, m, p, b: got.append(b), auto_ack=True)
    s.settle(0.3)
    out["queue_ttl_consumer_got"] = got

    # per-message expiration shorter than the queue TTL wins
    q_long = s.queue("q_long", arguments={"x-message-ttl": 60000, "x-dead-letter-exchange": dlx})
    s.publish("", q_long, "short-msg", expiration="100")
    out["msg_ttl_wins_count"] = s.wait_count(dlq, 1)
    out["msg_ttl_wins"] = s.drain(dlq)

    # queue TTL shorter than the per-message expiration wins (original-expiration recorded)
    q_short = s.queue("q_short", arguments={"x-message-ttl": 100, "x-dead-letter-exchange": dlx})
    s.publish("", q_short, "long-msg", expiration="60000")
    out["queue_ttl_wins_count"] = s.wait_count(dlq, 1)
    out["queue_ttl_wins"] = s.drain(dlq)

    # per-message expiration only (no queue TTL)
    q_plain = s.queue("q_plain", arguments={"x-dead-letter-exchange": dlx})
    s.publish("", q_plain, "m-exp", expiration="100", priority=1)
    out["msg_ttl_only_count"] = s.wait_count(dlq, 1)
    out["msg_ttl_only"] = s.drain(dlq)

    # requeued after its TTL passed: expires instead of being redelivered
    q_rq = s.queue("q_rq", arguments={"x-message-ttl": 200, "x-dead-letter-exchange": dlx})
    s.publish("", q_rq, "held")
    tag, _ = get_ack(s, q_rq)
    s.settle(0.4)
    s.ch.basic_reject(tag, requeue=True)
    out["requeue_after_ttl_dlq"] = s.wait_count(dlq, 1)
    out["requeue_after_ttl"] = [s.count(q_rq), s.drain(dlq)]

    # expired message with per-message expiration "0"
    s.publish("", q_plain, "zero", expiration="0")
    s.wait_count(dlq, 1)
    out["msg_expiration_zero"] = s.drain(dlq)


@sessioned
def observe_ttl_zero(s, out):
    dlx = s.exchange("dlx", "fanout")
    dlq = s.queue("dlq")
    s.bind(dlq, dlx)
    pub = s.connection().channel()
    pub.confirm_delivery()

    # x-message-ttl 0, no consumer: dead-lettered at once
    q0 = s.queue("q0", arguments={"x-message-ttl": 0, "x-dead-letter-exchange": dlx})
    pub.basic_publish("", q0, b"nobody-waits")
    out["no_consumer"] = [s.wait_count(dlq, 1), s.count(q0), s.drain(dlq)]

    # x-message-ttl 0 with a waiting consumer: delivered
    got = []
    ctag = s.ch.basic_consume(q0, lambda ch, m, p, b: got.append(b.decode()), auto_ack=True)
    pub.basic_publish("", q0, b"consumer-waits")
    s.pump(lambda: got, timeout=2)
    s.settle(0.2)
    out["waiting_consumer"] = [got, [m["body"] for m in s.drain(dlq)]]
    s.ch.basic_cancel(ctag)

    # consumer present but at its prefetch limit: the message expires instead
    s.ch.basic_qos(prefetch_count=1)
    got2 = []
    s.ch.basic_consume(q0, lambda ch, m, p, b: got2.append((m.delivery_tag, b.decode())))
    pub.basic_publish("", q0, b"first")
    s.pump(lambda: got2, timeout=2)
    pub.basic_publish("", q0, b"second")
    dl = s.wait_count(dlq, 1)
    s.settle(0.2)
    out["consumer_at_prefetch_limit"] = [[b for _, b in got2], dl, s.drain(dlq)]

    # per-message expiration "0" with a waiting consumer (no queue TTL)
    qm = s.queue("qm", arguments={"x-dead-letter-exchange": dlx})
    got3 = []
    s.ch.basic_consume(qm, lambda ch, m, p, b: got3.append(s.msg(m, p, b)), auto_ack=True)
    pub.basic_publish("", qm, b"exp0-waiting", pika.BasicProperties(expiration="0"))
    s.pump(lambda: got3, timeout=2)
    s.settle(0.2)
    out["msg_expiration0_waiting_consumer"] = [got3, [m["body"] for m in s.drain(dlq)]]


@sessioned
def observe_expiry_without_consumer(s, out):
    # a queue holding only expired messages empties without anybody consuming
    q = s.queue("q", arguments={"x-message-ttl": 150})
    s.ch.confirm_delivery()
    for i in range(5):
        s.publish("", q, "e%d" % i)
    out["after_publish"] = s.count(q)
    out["queue_ttl_emptied"] = s.wait_count(q, 0, timeout=5)

    # per-message expirations only, all short
    q2 = s.queue("q2")
    for i in range(4):
        s.publish("", q2, "p%d" % i, expiration=str(100 + 20 * i))
    out["msg_ttl_emptied"] = s.wait_count(q2, 0, timeout=5)

    # RabbitMQ only expires messages at the head of the queue: a short-lived message behind a
    # long-lived one stays counted until it reaches the head, then it is dropped
    q4 = s.queue("q4")
    s.publish("", q4, "long", expiration="60000")
    s.publish("", q4, "short", expiration="50")
    s.settle(0.3)
    out["head_only_expiry"] = [s.count(q4), s.get(q4), s.get(q4)]

    # basic.get after the TTL passed: empty
    q3 = s.queue("q3", arguments={"x-message-ttl": 100})
    s.publish("", q3, "late")
    s.settle(0.3)
    out["get_after_ttl"] = s.get(q3)


INVALID_EXPIRATIONS = ["abc", "-1", "1.5", "", " 1", "1 ", "+1", "0x10", "1e3",
                       "4294967295", "4294967296", "99999999999999999999"]


@sessioned
def observe_invalid_expiration(s, out):
    q = s.queue("q")
    for exp in INVALID_EXPIRATIONS:
        ch = s.conn.channel()
        ch.confirm_delivery()
        try:
            ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=exp))
            out[repr(exp)] = "accepted"
            ch.close()
        except pika.exceptions.ChannelClosedByBroker as e:
            out[repr(exp)] = error_of(e)
        except pika.exceptions.AMQPError as e:
            out[repr(exp)] = [type(e).__name__, str(e)]
    out["queue_count"] = s.count(q)


@sessioned
def observe_invalid_ttl_args(s, out):
    for label, val in [("neg", -1), ("string", "100"), ("zero", 0), ("big", 2 ** 32),
                       ("float_like_str", "1.5")]:
        ch = s.reopen()
        name = s.name("q_" + label)
        try:
            ch.queue_declare(name, arguments={"x-message-ttl": val})
            s.queues.append(name)
            out["x-message-ttl " + label] = "ok"
        except pika.exceptions.ChannelClosedByBroker as e:
            out["x-message-ttl " + label] = error_of(e)
    for label, val in [("neg", -1), ("string", "abc")]:
        ch = s.reopen()
        name = s.name("q_dlx_" + label)
        try:
            ch.queue_declare(name, arguments={"x-dead-letter-exchange": val})
            s.queues.append(name)
            out["x-dead-letter-exchange " + label] = "ok"
        except pika.exceptions.ChannelClosedByBroker as e:
            out["x-dead-letter-exchange " + label] = error_of(e)
    # a DL routing key without a DLX
    ch = s.reopen()
    name = s.name("q_key_only")
    try:
        ch.queue_declare(name, arguments={"x-dead-letter-routing-key": "k"})
        s.queues.append(name)
        out["dl_key_without_dlx"] = "ok"
    except pika.exceptions.ChannelClosedByBroker as e:
        out["dl_key_without_dlx"] = error_of(e)


# ---------------------------------------------------------------------------------------------
# 3. retry pattern
# ---------------------------------------------------------------------------------------------

@sessioned
def observe_retry(s, out):
    work_x = s.exchange("work_x", "direct")
    retry_x = s.exchange("retry_x", "fanout")
    work = s.queue("work", arguments={"x-dead-letter-exchange": retry_x})
    retry = s.queue("retry", arguments={"x-message-ttl": 200,
                                        "x-dead-letter-exchange": work_x})
    parking = s.queue("parking")
    s.bind(work, work_x, "task")
    s.bind(retry, retry_x)
    s.ch.confirm_delivery()

    rounds = []
    parked = []
    wconn = s.connection()
    wch = wconn.channel()

    def on_msg(ch, m, p, b):
        deaths = (p.headers or {}).get("x-death") or []
        count = 0
        for d in deaths:
            if d.get("queue") == work and d.get("reason") == "rejected":
                count = int(d.get("count"))
        rounds.append({"seen_rejections": count, "msg": s.msg(m, p, b, with_meta=True)})
        if count < 3:
            ch.basic_reject(m.delivery_tag, requeue=False)
        else:
            ch.basic_publish("", parking, b, pika.BasicProperties(headers=p.headers))
            ch.basic_ack(m.delivery_tag)
            parked.append(True)

    wch.basic_consume(work, on_msg)
    s.publish(work_x, "task", "job-1", headers={"attempt-info": "x"})
    s.pump(lambda: parked, timeout=10, conns=[wconn])
    out["rounds"] = rounds
    out["parking_count"] = s.wait_count(parking, 1)
    out["parked"] = s.drain(parking)
    out["left"] = [s.count(work), s.count(retry)]


# ---------------------------------------------------------------------------------------------
# 4. length limits
# ---------------------------------------------------------------------------------------------

@sessioned
def observe_max_length(s, out):
    dlx = s.exchange("dlx", "fanout")
    dlq = s.queue("dlq")
    s.bind(dlq, dlx)
    s.ch.confirm_delivery()

    # drop-head (default): the oldest are dead-lettered with reason maxlen
    q = s.queue("q", arguments={"x-max-length": 2, "x-dead-letter-exchange": dlx})
    for i in range(1, 5):
        s.publish("", q, "L%d" % i, expiration="60000")
    s.wait_count(dlq, 2)
    out["drop_head_dead"] = s.drain(dlq)
    out["drop_head_left"] = [m["body"] for m in s.drain(q)]

    # explicit drop-head, x-max-length 0: every message dropped
    q0 = s.queue("q0", arguments={"x-max-length": 0, "x-overflow": "drop-head",
                                  "x-dead-letter-exchange": dlx})
    s.publish("", q0, "zero-len")
    s.wait_count(dlq, 1)
    out["max_length_0"] = [s.count(q0), [m["body"] for m in s.drain(dlq)]]

    # x-max-length-bytes: body bytes only
    qb = s.queue("qb", arguments={"x-max-length-bytes": 10, "x-dead-letter-exchange": dlx})
    for i in range(1, 5):
        s.publish("", qb, "B%03d" % i, headers={"big-header": "h" * 100})  # 4 bytes each
    s.wait_count(dlq, 2)
    out["max_bytes_dead"] = [[m["body"], m["headers"]["x-death"][0]["reason"]]
                             for m in s.drain(dlq)]
    out["max_bytes_left"] = [m["body"] for m in s.drain(qb)]
    # a single message larger than the limit
    s.publish("", qb, "X" * 11)
    s.wait_count(dlq, 1)
    out["max_bytes_oversized"] = [s.count(qb), [m["body"] for m in s.drain(dlq)]]

    # both limits: whichever is hit first
    qboth = s.queue("qboth", arguments={"x-max-length": 3, "x-max-length-bytes": 5})
    for i in range(1, 5):
        s.publish("", qboth, "%d%d" % (i, i))  # 2 bytes each
    out["both_limits_left"] = [m["body"] for m in s.drain(qboth)]


@sessioned
def observe_reject_publish(s, out):
    dlx = s.exchange("dlx", "fanout")
    dlq = s.queue("dlq")
    s.bind(dlq, dlx)
    s.ch.confirm_delivery()

    def try_publish(q, body):
        try:
            s.ch.basic_publish("", q, body.encode())
            return "ack"
        except pika.exceptions.NackError as e:
            return ["nack", [m.body.decode() for m in e.messages]]
        except pika.exceptions.UnroutableError as e:
            return ["unroutable", [m.body.decode() for m in e.messages]]

    q = s.queue("q", arguments={"x-max-length": 2, "x-overflow": "reject-publish",
                                "x-dead-letter-exchange": dlx})
    out["reject_publish"] = [try_publish(q, "P%d" % i) for i in range(1, 4)]
    s.settle(0.2)
    out["reject_publish_state"] = [s.count(dlq), [m["body"] for m in s.drain(q)]]
    # room again after consuming
    s.publish("", q, "again1")
    out["reject_publish_after_drain"] = [try_publish(q, "again2"), try_publish(q, "again3")]
    s.drain(q)

    # reject-publish-dlx: the refused message is dead-lettered
    qd = s.queue("qd", arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                  "x-dead-letter-exchange": dlx})
    out["reject_publish_dlx"] = [try_publish(qd, "D1"), try_publish(qd, "D2")]
    s.wait_count(dlq, 1)
    out["reject_publish_dlx_dead"] = s.drain(dlq)
    out["reject_publish_dlx_left"] = [m["body"] for m in s.drain(qd)]

    # reject-publish on x-max-length-bytes
    qbytes = s.queue("qbytes", arguments={"x-max-length-bytes": 5,
                                          "x-overflow": "reject-publish"})
    out["reject_publish_bytes"] = [try_publish(qbytes, "abc"), try_publish(qbytes, "de"),
                                   try_publish(qbytes, "f")]
    out["reject_publish_bytes_left"] = [m["body"] for m in s.drain(qbytes)]

    # reject-publish, x-max-length 0
    qz = s.queue("qz", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    out["reject_publish_len0"] = try_publish(qz, "z")

    # without confirms the refused publish is silently dropped (channel stays open)
    plain = s.conn.channel()
    q1 = s.queue("q1", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    plain.basic_publish("", q1, b"n1")
    plain.basic_publish("", q1, b"n2")
    plain.queue_declare(q1, passive=True)
    out["reject_publish_no_confirm"] = [plain.is_open, [m["body"] for m in s.drain(q1)]]

    # message routed to two queues, one full: still nacked
    fan = s.exchange("fan", "fanout")
    full = s.queue("full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    room = s.queue("room")
    s.bind(full, fan)
    s.bind(room, fan)
    try:
        s.ch.basic_publish(fan, "", b"two-queues")
        out["two_queues_one_full"] = "ack"
    except pika.exceptions.NackError:
        out["two_queues_one_full"] = "nack"
    out["two_queues_one_full_room"] = [m["body"] for m in s.drain(room)]

    # invalid x-overflow value
    ch = s.reopen()
    name = s.name("q_bad_overflow")
    try:
        ch.queue_declare(name, arguments={"x-overflow": "bogus"})
        s.queues.append(name)
        out["bad_overflow"] = "ok"
    except pika.exceptions.ChannelClosedByBroker as e:
        out["bad_overflow"] = error_of(e)
    ch = s.reopen()
    name = s.name("q_bad_maxlen")
    try:
        ch.queue_declare(name, arguments={"x-max-length": -1})
        s.queues.append(name)
        out["bad_max_length"] = "ok"
    except pika.exceptions.ChannelClosedByBroker as e:
        out["bad_max_length"] = error_of(e)


# ---------------------------------------------------------------------------------------------
# 5. dead-letter cycles
# ---------------------------------------------------------------------------------------------

@sessioned
def observe_cycles(s, out):
    s.ch.confirm_delivery()
    mon = s.queue("monitor")

    # A expires back into A (fanout DLX also feeding a monitor): A's copy is dropped
    fa = s.exchange("fa", "fanout")
    a = s.queue("A", arguments={"x-message-ttl": 100, "x-dead-letter-exchange": fa})
    s.bind(a, fa)
    s.bind(mon, fa)
    s.publish("", a, "self-expire")
    s.wait_count(mon, 1)
    s.settle(0.5)
    out["self_expire"] = {"A": s.count(a), "monitor": s.drain(mon)}

    # two queues expiring into each other: dropped when the cycle closes
    fb = s.exchange("fb", "fanout")
    fc = s.exchange("fc", "fanout")
    b = s.queue("B", arguments={"x-message-ttl": 100, "x-dead-letter-exchange": fb})
    c = s.queue("C", arguments={"x-message-ttl": 100, "x-dead-letter-exchange": fc})
    s.bind(c, fb)
    s.bind(mon, fb)
    s.bind(b, fc)
    s.bind(mon, fc)
    s.publish("", b, "pair-expire")
    s.wait_count(mon, 2)
    s.settle(0.5)
    out["pair_expire"] = {"B": s.count(b), "C": s.count(c), "monitor": s.drain(mon)}

    # rejected back into itself: allowed, count grows
    r = s.queue("R", arguments={"x-dead-letter-exchange": ""})  # default exchange, key = R
    s.publish("", r, "self-reject")
    seen = []
    for _ in range(3):
        tag, m = get_ack(s, r)
        seen.append(m)
        s.ch.basic_reject(tag, requeue=False)
        s.wait_count(r, 1)
    seen.append(s.get(r))
    out["self_reject"] = seen

    # rejected once then expiring into itself: the newest entry is "expired" -> dropped
    fe = s.exchange("fe", "fanout")
    e = s.queue("E", arguments={"x-message-ttl": 300, "x-dead-letter-exchange": fe})
    s.bind(e, fe)
    s.bind(mon, fe)
    s.publish("", e, "reject-then-expire")
    tag, _ = get_ack(s, e)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(mon, 1)
    first = s.drain(mon)
    s.wait_count(mon, 1)
    s.settle(0.6)
    out["reject_then_expire"] = {"E": s.count(e), "monitor_after_reject": first,
                                 "monitor_after_expiry": s.drain(mon)}

    # expire into a queue whose consumer rejects back: a rejection in the cycle keeps it alive
    fg = s.exchange("fg", "fanout")
    fh = s.exchange("fh", "fanout")
    g = s.queue("G", arguments={"x-message-ttl": 100, "x-dead-letter-exchange": fg})
    h = s.queue("H", arguments={"x-dead-letter-exchange": fh})
    s.bind(h, fg)
    s.bind(g, fh)
    s.publish("", g, "expire-reject")
    s.wait_count(h, 1)
    tag, m1 = get_ack(s, h)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(h, 1)
    tag, m2 = get_ack(s, h)
    s.ch.basic_reject(tag, requeue=False)
    s.wait_count(h, 1)
    tag, m3 = get_ack(s, h)
    s.ch.basic_ack(tag)
    out["expire_reject_cycle"] = [m1, m2, m3]


# ---------------------------------------------------------------------------------------------
# 6. priority queues
# ---------------------------------------------------------------------------------------------

PRIORITIES = [None, 1, 5, 10, 5, 20, 0, 255, 3, 1, None, 10]


@sessioned
def observe_priority(s, out):
    s.ch.confirm_delivery()
    q = s.queue("pq", arguments={"x-max-priority": 10})
    for i, pr in enumerate(PRIORITIES):
        s.publish("", q, "m%02d-p%s" % (i, pr), priority=pr)
    got = s.drain(q)
    out["get_order"] = [[m["body"], m.get("props", {}).get("priority")] for m in got]

    # the same through a consumer with prefetch
    for i, pr in enumerate(PRIORITIES):
        s.publish("", q, "m%02d-p%s" % (i, pr), priority=pr)
    s.ch.basic_qos(prefetch_count=100)
    seen = []
    ctag = s.ch.basic_consume(q, lambda ch, m, p, b: seen.append(b.decode()), auto_ack=True)
    s.pump(lambda: len(seen) >= len(PRIORITIES))
    s.ch.basic_cancel(ctag)
    out["consume_order"] = seen

    # requeued messages go back into their priority position
    for i, pr in enumerate([1, 9, 5]):
        s.publish("", q, "r%d-p%d" % (i, pr), priority=pr)
    tags = [get_ack(s, q)[0] for _ in range(2)]  # takes p9 then p5
    s.publish("", q, "late-p7", priority=7)
    for t in tags:
        s.ch.basic_reject(t, requeue=True)
    out["requeue_order"] = [[m["body"], m["rk"]] for m in s.drain(q)]

    # no x-max-priority: priorities ignored
    fifo = s.queue("fifo")
    for i, pr in enumerate([1, 9, 5]):
        s.publish("", fifo, "f%d-p%d" % (i, pr), priority=pr)
    out["no_max_priority"] = [m["body"] for m in s.drain(fifo)]

    # small max priority
    q2 = s.queue("pq2", arguments={"x-max-priority": 2})
    for i, pr in enumerate([0, 3, 1, 2, 200, None]):
        s.publish("", q2, "s%d-p%s" % (i, pr), priority=pr)
    out["max_priority_2"] = [m["body"] for m in s.drain(q2)]

    # invalid x-max-priority values
    for label, val in [("zero", 0), ("256", 256), ("neg", -1), ("string", "5"), ("255", 255)]:
        ch = s.reopen()
        name = s.name("pq_" + label)
        try:
            ch.queue_declare(name, arguments={"x-max-priority": val})
            s.queues.append(name)
            out["x-max-priority " + label] = "ok"
        except pika.exceptions.ChannelClosedByBroker as e:
            out["x-max-priority " + label] = error_of(e)


# ---------------------------------------------------------------------------------------------
# 7. x-delivery-limit
# ---------------------------------------------------------------------------------------------

def delivery_limit_run(s, out, queue_args, requeue_with="nack"):
    dlx = s.exchange("dlx", "fanout")
    dlq = s.queue("dlq")
    s.bind(dlq, dlx)
    args = dict(queue_args)
    args.update({"x-delivery-limit": 2, "x-dead-letter-exchange": dlx})
    q = s.queue("lq", arguments=args, durable=True)
    s.ch.confirm_delivery()
    s.publish("", q, "poison", headers={"h": 1}, delivery_mode=2)
    deliveries = []
    cconn = s.connection()
    cch = cconn.channel()
    cch.basic_qos(prefetch_count=1)

    def on_msg(ch, m, p, b):
        deliveries.append(s.msg(m, p, b, with_meta=True))
        if requeue_with == "nack":
            ch.basic_nack(m.delivery_tag, requeue=True)
        else:
            ch.basic_reject(m.delivery_tag, requeue=True)

    cch.basic_consume(q, on_msg)
    s.pump(lambda: len(deliveries) >= 3 and s.count(dlq) >= 1, timeout=8,
           conns=[cconn, s.conn])
    s.settle(0.5, conns=[cconn, s.conn])  # nothing more is delivered
    out["deliveries"] = deliveries
    out["dead"] = s.drain(dlq)
    out["left"] = s.count(q)


@sessioned
def observe_delivery_limit_quorum(s, out):
    delivery_limit_run(s, out, {"x-queue-type": "quorum"})


@sessioned
def observe_delivery_limit_quorum_reject(s, out):
    delivery_limit_run(s, out, {"x-queue-type": "quorum"}, requeue_with="reject")


@sessioned
def observe_delivery_limit_classic(s, out):
    delivery_limit_run(s, out, {})


# ---------------------------------------------------------------------------------------------
# 8. direct reply-to
# ---------------------------------------------------------------------------------------------

REPLY_TO = "amq.rabbitmq.reply-to"


def reply_token(v):
    if isinstance(v, str) and v.startswith(REPLY_TO + ".") and len(v) > len(REPLY_TO) + 1:
        return REPLY_TO + ".<token>"
    return v


@sessioned
def observe_direct_reply_to(s, out):
    server_q = s.queue("server_q")
    sconn = s.connection()
    sch = sconn.channel()

    replies = []
    reply_rks = []

    def on_reply(ch, m, p, b):
        reply_rks.append(m.routing_key)
        r = s.msg(m, p, b, with_meta=True)
        r["rk"] = reply_token(r["rk"])
        replies.append(r)

    s.ch.basic_consume(REPLY_TO, on_reply, auto_ack=True)
    for i in range(2):
        s.ch.basic_publish("", server_q, ("request-%d" % i).encode(),
                           pika.BasicProperties(reply_to=REPLY_TO, correlation_id="c%d" % i))
    sconn.process_data_events(time_limit=0.05)
    requests = []
    deadline = time.monotonic() + TIMEOUT
    while len(requests) < 2 and time.monotonic() < deadline:
        m, p, b = sch.basic_get(server_q, auto_ack=True)
        if m is None:
            s.conn.process_data_events(time_limit=0.02)
            continue
        requests.append((p.reply_to, p.correlation_id, b.decode()))
    out["requests"] = [[reply_token(r), c, b] for r, c, b in requests]
    out["reply_to_tokens_equal"] = len({r for r, _, _ in requests}) == 1
    for reply_to, corr, body in requests:
        sch.basic_publish("", reply_to, ("reply-to-" + body).encode(),
                          pika.BasicProperties(correlation_id=corr))
    s.pump(lambda: len(replies) >= 2)
    out["replies"] = replies
    # each reply is delivered with the routing key it was published to (the full token)
    out["reply_rk_is_reply_to"] = reply_rks == [r for r, _, _ in requests]
    # the pseudo-queue can be declared passively
    try:
        ok = s.ch.queue_declare(REPLY_TO, passive=True).method
        out["passive_declare"] = [ok.queue, ok.message_count, ok.consumer_count]
    except pika.exceptions.ChannelClosedByBroker as e:
        out["passive_declare"] = error_of(e)
    # replying after the requesting connection is gone: dropped (publisher sees an ack)
    token = requests[0][0] if requests else REPLY_TO + ".none"
    s.conn.close()
    sch.confirm_delivery()
    try:
        sch.basic_publish("", token, b"late", mandatory=True)
        out["reply_after_close"] = "ack"
    except pika.exceptions.UnroutableError as e:
        out["reply_after_close"] = ["unroutable", [[m.method.reply_code, m.method.reply_text]
                                                   for m in e.messages]]
    except pika.exceptions.AMQPError as e:
        out["reply_after_close"] = [type(e).__name__, str(e)]


@sessioned
def observe_direct_reply_to_errors(s, out):
    server_q = s.queue("server_q")
    # publish with reply_to set, without consuming the pseudo-queue
    ch = s.conn.channel()
    try:
        ch.basic_publish("", server_q, b"req", pika.BasicProperties(reply_to=REPLY_TO))
        ch.queue_declare(server_q, passive=True)  # round trip to see the channel close
        out["publish_without_consumer"] = "ok"
    except pika.exceptions.ChannelClosedByBroker as e:
        out["publish_without_consumer"] = error_of(e)
    out["server_q_count"] = s.count(server_q)
    # consume with manual acknowledgement
    ch = s.conn.channel()
    try:
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False)
        out["consume_manual_ack"] = "ok"
    except pika.exceptions.ChannelClosedByBroker as e:
        out["consume_manual_ack"] = error_of(e)
    # consuming twice on one channel
    ch = s.conn.channel()
    try:
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        out["consume_twice"] = "ok"
    except pika.exceptions.ChannelClosedByBroker as e:
        out["consume_twice"] = error_of(e)
    # publishing to a made-up reply token
    ch = s.conn.channel()
    ch.confirm_delivery()
    try:
        ch.basic_publish("", REPLY_TO + ".bogus", b"x", mandatory=True)
        out["publish_bogus_token"] = "ack"
    except pika.exceptions.UnroutableError as e:
        out["publish_bogus_token"] = ["unroutable", [[m.method.reply_code, m.method.reply_text]
                                                     for m in e.messages]]
    except pika.exceptions.ChannelClosedByBroker as e:
        out["publish_bogus_token"] = error_of(e)


# ---------------------------------------------------------------------------------------------
# Recorded from RabbitMQ 3.10.8 (see module docstring). Re-record rather than edit by hand.
# ---------------------------------------------------------------------------------------------

EXPECTED_REJECT = {'consumer_reject': [{'body': 'c1',
                      'headers': {'x-death': [{'count': ('l', 1),
                                               'exchange': '',
                                               'queue': 'src',
                                               'reason': 'rejected',
                                               'routing-keys': ['src'],
                                               'time': '<now>'}],
                                  'x-first-death-exchange': '',
                                  'x-first-death-queue': 'src',
                                  'x-first-death-reason': 'rejected'},
                      'rk': 'src',
                      'x': 'dlx'}],
 'default_exchange_dlx': [{'body': 'd1',
                           'headers': {'x-death': [{'count': ('l', 1),
                                                    'exchange': '',
                                                    'queue': 'viadef',
                                                    'reason': 'rejected',
                                                    'routing-keys': ['viadef'],
                                                    'time': '<now>'}],
                                       'x-first-death-exchange': '',
                                       'x-first-death-queue': 'viadef',
                                       'x-first-death-reason': 'rejected'},
                           'rk': 'dlq',
                           'x': ''}],
 'dlqs_empty_at_end': [0, 0, 0, 0],
 'missing_dlx': [0, 0],
 'nack_dl_routing_key': [{'body': 'n1',
                          'headers': {'k': ('I', 2),
                                      'x-death': [{'count': ('l', 1),
                                                   'exchange': '',
                                                   'queue': 'src_key',
                                                   'reason': 'rejected',
                                                   'routing-keys': ['src_key'],
                                                   'time': '<now>'}],
                                      'x-first-death-exchange': '',
                                      'x-first-death-queue': 'src_key',
                                      'x-first-death-reason': 'rejected'},
                          'rk': 'dlk',
                          'x': 'dlx'}],
 'nack_multiple_order': ['m1', 'm2', 'm3'],
 'named_exchange': [{'body': 'viawork',
                     'headers': {'x-death': [{'count': ('l', 1),
                                              'exchange': 'work',
                                              'queue': 'src',
                                              'reason': 'rejected',
                                              'routing-keys': ['wk'],
                                              'time': '<now>'}],
                                 'x-first-death-exchange': 'work',
                                 'x-first-death-queue': 'src',
                                 'x-first-death-reason': 'rejected'},
                     'rk': 'wk',
                     'x': 'dlx'}],
 'no_dlx_dropped': 0,
 'reject_full_props': [{'body': 'r1',
                        'headers': {'k': ('I', 1),
                                    's': 'v',
                                    'x-death': [{'count': ('l', 1),
                                                 'exchange': '',
                                                 'original-expiration': '60000',
                                                 'queue': 'src',
                                                 'reason': 'rejected',
                                                 'routing-keys': ['src'],
                                                 'time': '<now>'}],
                                    'x-first-death-exchange': '',
                                    'x-first-death-queue': 'src',
                                    'x-first-death-reason': 'rejected'},
                        'props': {'app_id': 'app',
                                  'content_encoding': 'utf-8',
                                  'content_type': 'text/plain',
                                  'correlation_id': 'corr-1',
                                  'delivery_mode': 2,
                                  'message_id': 'mid-1',
                                  'priority': 3,
                                  'reply_to': 'somewhere',
                                  'timestamp': 1700000000,
                                  'type': 't1'},
                        'rk': 'src',
                        'x': 'dlx'}],
 'reject_src_left': 0,
 'requeue_true': [1, 0]}

EXPECTED_CC = {'bcc_no_dl_key': {'d_dlk': [],
                   'd_k1': [{'body': 'bcc1',
                             'headers': {'x-death': [{'count': ('l', 1),
                                                      'exchange': 'ex',
                                                      'queue': 's1',
                                                      'reason': 'rejected',
                                                      'routing-keys': ['k1'],
                                                      'time': '<now>'}],
                                         'x-first-death-exchange': 'ex',
                                         'x-first-death-queue': 's1',
                                         'x-first-death-reason': 'rejected'},
                             'rk': 'k1',
                             'x': 'dlx'}],
                   'd_k2': [{'body': 'bcc1',
                             'headers': {'x-death': [{'count': ('l', 1),
                                                      'exchange': 'ex',
                                                      'queue': 's1',
                                                      'reason': 'rejected',
                                                      'routing-keys': ['k1'],
                                                      'time': '<now>'}],
                                         'x-first-death-exchange': 'ex',
                                         'x-first-death-queue': 's1',
                                         'x-first-death-reason': 'rejected'},
                             'rk': 'k1',
                             'x': 'dlx'}]},
 'cc_no_dl_key': {'d_dlk': [],
                  'd_k1': [{'body': 'cc1',
                            'headers': {'CC': ['k2'],
                                        'other': 'x',
                                        'x-death': [{'count': ('l', 1),
                                                     'exchange': 'ex',
                                                     'queue': 's1',
                                                     'reason': 'rejected',
                                                     'routing-keys': ['k1', 'k2'],
                                                     'time': '<now>'}],
                                        'x-first-death-exchange': 'ex',
                                        'x-first-death-queue': 's1',
                                        'x-first-death-reason': 'rejected'},
                            'rk': 'k1',
                            'x': 'dlx'}],
                  'd_k2': [{'body': 'cc1',
                            'headers': {'CC': ['k2'],
                                        'other': 'x',
                                        'x-death': [{'count': ('l', 1),
                                                     'exchange': 'ex',
                                                     'queue': 's1',
                                                     'reason': 'rejected',
                                                     'routing-keys': ['k1', 'k2'],
                                                     'time': '<now>'}],
                                        'x-first-death-exchange': 'ex',
                                        'x-first-death-queue': 's1',
                                        'x-first-death-reason': 'rejected'},
                            'rk': 'k1',
                            'x': 'dlx'}]},
 'cc_repeat_key': {'d_dlk': [],
                   'd_k1': [{'body': 'cc3',
                             'headers': {'CC': ['k2', 'k1'],
                                         'x-death': [{'count': ('l', 1),
                                                      'exchange': 'ex',
                                                      'queue': 's1',
                                                      'reason': 'rejected',
                                                      'routing-keys': ['k1', 'k2', 'k1'],
                                                      'time': '<now>'}],
                                         'x-first-death-exchange': 'ex',
                                         'x-first-death-queue': 's1',
                                         'x-first-death-reason': 'rejected'},
                             'rk': 'k1',
                             'x': 'dlx'}],
                   'd_k2': [{'body': 'cc3',
                             'headers': {'CC': ['k2', 'k1'],
                                         'x-death': [{'count': ('l', 1),
                                                      'exchange': 'ex',
                                                      'queue': 's1',
                                                      'reason': 'rejected',
                                                      'routing-keys': ['k1', 'k2', 'k1'],
                                                      'time': '<now>'}],
                                         'x-first-death-exchange': 'ex',
                                         'x-first-death-queue': 's1',
                                         'x-first-death-reason': 'rejected'},
                             'rk': 'k1',
                             'x': 'dlx'}]},
 'cc_with_dl_key': {'d_dlk': [{'body': 'cc2',
                               'headers': {'other': 'x',
                                           'x-death': [{'count': ('l', 1),
                                                        'exchange': 'ex',
                                                        'queue': 's2k',
                                                        'reason': 'rejected',
                                                        'routing-keys': ['k3', 'k2'],
                                                        'time': '<now>'}],
                                           'x-first-death-exchange': 'ex',
                                           'x-first-death-queue': 's2k',
                                           'x-first-death-reason': 'rejected'},
                               'rk': 'dlk',
                               'x': 'dlx'}],
                    'd_k1': [],
                    'd_k2': []}}

EXPECTED_TWICE = {'1_after_A_expired': {'body': 'twice',
                       'headers': {'h': ('I', 1),
                                   'x-death': [{'count': ('l', 1),
                                                'exchange': '',
                                                'original-expiration': '50',
                                                'queue': 'A',
                                                'reason': 'expired',
                                                'routing-keys': ['A'],
                                                'time': '<now>'}],
                                   'x-first-death-exchange': '',
                                   'x-first-death-queue': 'A',
                                   'x-first-death-reason': 'expired'},
                       'rk': 'B',
                       'x': ''},
 '2_after_B_rejected': {'body': 'twice',
                        'headers': {'h': ('I', 1),
                                    'x-death': [{'count': ('l', 1),
                                                 'exchange': '',
                                                 'queue': 'B',
                                                 'reason': 'rejected',
                                                 'routing-keys': ['B'],
                                                 'time': '<now>'},
                                                {'count': ('l', 1),
                                                 'exchange': '',
                                                 'original-expiration': '50',
                                                 'queue': 'A',
                                                 'reason': 'expired',
                                                 'routing-keys': ['A'],
                                                 'time': '<now>'}],
                                    'x-first-death-exchange': '',
                                    'x-first-death-queue': 'A',
                                    'x-first-death-reason': 'expired'},
                        'rk': 'A',
                        'x': ''},
 '3_after_A_rejected': {'body': 'twice',
                        'headers': {'h': ('I', 1),
                                    'x-death': [{'count': ('l', 1),
                                                 'exchange': '',
                                                 'queue': 'A',
                                                 'reason': 'rejected',
                                                 'routing-keys': ['A'],
                                                 'time': '<now>'},
                                                {'count': ('l', 1),
                                                 'exchange': '',
                                                 'original-expiration': '50',
                                                 'queue': 'A',
                                                 'reason': 'expired',
                                                 'routing-keys': ['A'],
                                                 'time': '<now>'},
                                                {'count': ('l', 1),
                                                 'exchange': '',
                                                 'queue': 'B',
                                                 'reason': 'rejected',
                                                 'routing-keys': ['B'],
                                                 'time': '<now>'}],
                                    'x-first-death-exchange': '',
                                    'x-first-death-queue': 'A',
                                    'x-first-death-reason': 'expired'},
                        'rk': 'B',
                        'x': ''},
 '4_after_B_rejected_again': {'body': 'twice',
                              'headers': {'h': ('I', 1),
                                          'x-death': [{'count': ('l', 2),
                                                       'exchange': '',
                                                       'queue': 'B',
                                                       'reason': 'rejected',
                                                       'routing-keys': ['B'],
                                                       'time': '<now>'},
                                                      {'count': ('l', 1),
                                                       'exchange': '',
                                                       'original-expiration': '50',
                                                       'queue': 'A',
                                                       'reason': 'expired',
                                                       'routing-keys': ['A'],
                                                       'time': '<now>'},
                                                      {'count': ('l', 1),
                                                       'exchange': '',
                                                       'queue': 'A',
                                                       'reason': 'rejected',
                                                       'routing-keys': ['A'],
                                                       'time': '<now>'}],
                                          'x-first-death-exchange': '',
                                          'x-first-death-queue': 'A',
                                          'x-first-death-reason': 'expired'},
                              'rk': 'A',
                              'x': ''},
 '5_after_A_rejected_again': {'body': 'twice',
                              'headers': {'h': ('I', 1),
                                          'x-death': [{'count': ('l', 2),
                                                       'exchange': '',
                                                       'queue': 'A',
                                                       'reason': 'rejected',
                                                       'routing-keys': ['A'],
                                                       'time': '<now>'},
                                                      {'count': ('l', 1),
                                                       'exchange': '',
                                                       'original-expiration': '50',
                                                       'queue': 'A',
                                                       'reason': 'expired',
                                                       'routing-keys': ['A'],
                                                       'time': '<now>'},
                                                      {'count': ('l', 2),
                                                       'exchange': '',
                                                       'queue': 'B',
                                                       'reason': 'rejected',
                                                       'routing-keys': ['B'],
                                                       'time': '<now>'}],
                                          'x-first-death-exchange': '',
                                          'x-first-death-queue': 'A',
                                          'x-first-death-reason': 'expired'},
                              'rk': 'B',
                              'x': ''}}

EXPECTED_TWO_QUEUES = {'in_dlq': [{'body': 'two',
             'headers': {'x-death': [{'count': ('l', 1),
                                      'exchange': 'dlx1',
                                      'queue': 'q2',
                                      'reason': 'rejected',
                                      'routing-keys': ['q1', 'nobody'],
                                      'time': '<now>'},
                                     {'count': ('l', 1),
                                      'exchange': '',
                                      'original-expiration': '30000',
                                      'queue': 'q1',
                                      'reason': 'rejected',
                                      'routing-keys': ['q1', 'nobody'],
                                      'time': '<now>'}],
                         'x-first-death-exchange': '',
                         'x-first-death-queue': 'q1',
                         'x-first-death-reason': 'rejected'},
             'rk': 'final.key',
             'x': 'dlx2'}],
 'in_q2': {'body': 'two',
           'headers': {'CC': ['nobody'],
                       'x-death': [{'count': ('l', 1),
                                    'exchange': '',
                                    'original-expiration': '30000',
                                    'queue': 'q1',
                                    'reason': 'rejected',
                                    'routing-keys': ['q1', 'nobody'],
                                    'time': '<now>'}],
                       'x-first-death-exchange': '',
                       'x-first-death-queue': 'q1',
                       'x-first-death-reason': 'rejected'},
           'rk': 'q1',
           'x': 'dlx1'}}

EXPECTED_TTL = {'msg_expiration_zero': [{'body': 'zero',
                          'headers': {'x-death': [{'count': ('l', 1),
                                                   'exchange': '',
                                                   'original-expiration': '0',
                                                   'queue': 'q_plain',
                                                   'reason': 'expired',
                                                   'routing-keys': ['q_plain'],
                                                   'time': '<now>'}],
                                      'x-first-death-exchange': '',
                                      'x-first-death-queue': 'q_plain',
                                      'x-first-death-reason': 'expired'},
                          'rk': 'q_plain',
                          'x': 'dlx'}],
 'msg_ttl_only': [{'body': 'm-exp',
                   'headers': {'x-death': [{'count': ('l', 1),
                                            'exchange': '',
                                            'original-expiration': '100',
                                            'queue': 'q_plain',
                                            'reason': 'expired',
                                            'routing-keys': ['q_plain'],
                                            'time': '<now>'}],
                               'x-first-death-exchange': '',
                               'x-first-death-queue': 'q_plain',
                               'x-first-death-reason': 'expired'},
                   'props': {'priority': 1},
                   'rk': 'q_plain',
                   'x': 'dlx'}],
 'msg_ttl_only_count': 1,
 'msg_ttl_wins': [{'body': 'short-msg',
                   'headers': {'x-death': [{'count': ('l', 1),
                                            'exchange': '',
                                            'original-expiration': '100',
                                            'queue': 'q_long',
                                            'reason': 'expired',
                                            'routing-keys': ['q_long'],
                                            'time': '<now>'}],
                               'x-first-death-exchange': '',
                               'x-first-death-queue': 'q_long',
                               'x-first-death-reason': 'expired'},
                   'rk': 'q_long',
                   'x': 'dlx'}],
 'msg_ttl_wins_count': 1,
 'queue_ttl_consumer_got': [],
 'queue_ttl_dead': [{'body': 't1',
                     'headers': {'n': 't1',
                                 'x-death': [{'count': ('l', 1),
                                              'exchange': '',
                                              'queue': 'qttl',
                                              'reason': 'expired',
                                              'routing-keys': ['qttl'],
                                              'time': '<now>'}],
                                 'x-first-death-exchange': '',
                                 'x-first-death-queue': 'qttl',
                                 'x-first-death-reason': 'expired'},
                     'rk': 'qttl',
                     'x': 'dlx'},
                    {'body': 't2',
                     'headers': {'n': 't2',
                                 'x-death': [{'count': ('l', 1),
                                              'exchange': '',
                                              'queue': 'qttl',
                                              'reason': 'expired',
                                              'routing-keys': ['qttl'],
                                              'time': '<now>'}],
                                 'x-first-death-exchange': '',
                                 'x-first-death-queue': 'qttl',
                                 'x-first-death-reason': 'expired'},
                     'rk': 'qttl',
                     'x': 'dlx'},
                    {'body': 't3',
                     'headers': {'n': 't3',
                                 'x-death': [{'count': ('l', 1),
                                              'exchange': '',
                                              'queue': 'qttl',
                                              'reason': 'expired',
                                              'routing-keys': ['qttl'],
                                              'time': '<now>'}],
                                 'x-first-death-exchange': '',
                                 'x-first-death-queue': 'qttl',
                                 'x-first-death-reason': 'expired'},
                     'rk': 'qttl',
                     'x': 'dlx'}],
 'queue_ttl_dlq_count': 3,
 'queue_ttl_src_count': 0,
 'queue_ttl_wins': [{'body': 'long-msg',
                     'headers': {'x-death': [{'count': ('l', 1),
                                              'exchange': '',
                                              'original-expiration': '60000',
                                              'queue': 'q_short',
                                              'reason': 'expired',
                                              'routing-keys': ['q_short'],
                                              'time': '<now>'}],
                                 'x-first-death-exchange': '',
                                 'x-first-death-queue': 'q_short',
                                 'x-first-death-reason': 'expired'},
                     'rk': 'q_short',
                     'x': 'dlx'}],
 'queue_ttl_wins_count': 1,
 'requeue_after_ttl': [0,
                       [{'body': 'held',
                         'headers': {'x-death': [{'count': ('l', 1),
                                                  'exchange': '',
                                                  'queue': 'q_rq',
                                                  'reason': 'expired',
                                                  'routing-keys': ['q_rq'],
                                                  'time': '<now>'}],
                                     'x-first-death-exchange': '',
                                     'x-first-death-queue': 'q_rq',
                                     'x-first-death-reason': 'expired'},
                         'rk': 'q_rq',
                         'x': 'dlx'}]],
 'requeue_after_ttl_dlq': 1}

EXPECTED_TTL_ZERO = {'consumer_at_prefetch_limit': [['first'], 1,
                                [{'body': 'second',
                                  'headers': {'x-death': [{'count': ('l', 1),
                                                           'exchange': '',
                                                           'queue': 'q0',
                                                           'reason': 'expired',
                                                           'routing-keys': ['q0'],
                                                           'time': '<now>'}],
                                              'x-first-death-exchange': '',
                                              'x-first-death-queue': 'q0',
                                              'x-first-death-reason': 'expired'},
                                  'rk': 'q0',
                                  'x': 'dlx'}]],
 'msg_expiration0_waiting_consumer': [[{'body': 'exp0-waiting',
                                        'props': {'expiration': '0'},
                                        'rk': 'qm',
                                        'x': ''}],
                                      []],
 'no_consumer': [1, 0,
                 [{'body': 'nobody-waits',
                   'headers': {'x-death': [{'count': ('l', 1),
                                            'exchange': '',
                                            'queue': 'q0',
                                            'reason': 'expired',
                                            'routing-keys': ['q0'],
                                            'time': '<now>'}],
                               'x-first-death-exchange': '',
                               'x-first-death-queue': 'q0',
                               'x-first-death-reason': 'expired'},
                   'rk': 'q0',
                   'x': 'dlx'}]],
 'waiting_consumer': [['consumer-waits'], []]}

EXPECTED_EXPIRY_WITHOUT_CONSUMER = {'after_publish': 5,
 'get_after_ttl': None,
 'head_only_expiry': [2, {'body': 'long', 'props': {'expiration': '60000'}, 'rk': 'q4', 'x': ''},
                      None],
 'msg_ttl_emptied': 0,
 'queue_ttl_emptied': 0}

EXPECTED_INVALID_EXPIRATION = {"' 1'": [406, "PRECONDITION_FAILED - invalid expiration ' 1': no_integer"],
 "''": [406, "PRECONDITION_FAILED - invalid expiration '': no_integer"],
 "'+1'": 'accepted',
 "'-1'": [406, "PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}"],
 "'0x10'": [406, 'PRECONDITION_FAILED - invalid expiration \'0x10\': {leftover_string,"x10"}'],
 "'1 '": [406, 'PRECONDITION_FAILED - invalid expiration \'1 \': {leftover_string," "}'],
 "'1.5'": [406, 'PRECONDITION_FAILED - invalid expiration \'1.5\': {leftover_string,".5"}'],
 "'1e3'": [406, 'PRECONDITION_FAILED - invalid expiration \'1e3\': {leftover_string,"e3"}'],
 "'4294967295'": 'accepted',
 "'4294967296'": 'accepted',
 "'99999999999999999999'": [406,
                            "PRECONDITION_FAILED - invalid expiration '99999999999999999999': "
                            '{value_too_large,\n'
                            '                                            99999999999999999999}'],
 "'abc'": [406, "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"],
 'queue_count': 2}

EXPECTED_INVALID_TTL_ARGS = {'dl_key_without_dlx': [406,
                        "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue "
                        "'q_key_only' in vhost '/': routing_key_but_no_dlx_defined"],
 'x-dead-letter-exchange neg': [406,
                                "PRECONDITION_FAILED - invalid type 'signedint' for arg "
                                "'x-dead-letter-exchange' in queue 'q_dlx_neg' in vhost '/'"],
 'x-dead-letter-exchange string': 'ok',
 'x-message-ttl big': 'ok',
 'x-message-ttl float_like_str': [406,
                                  "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue "
                                  '\'q_float_like_str\' in vhost \'/\': "expected integer, got '
                                  'longstr"'],
 'x-message-ttl neg': [406,
                       "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q_neg' in "
                       "vhost '/': {value_negative,-1}"],
 'x-message-ttl string': [406,
                          "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q_string' "
                          'in vhost \'/\': "expected integer, got longstr"'],
 'x-message-ttl zero': 'ok'}

EXPECTED_RETRY = {'left': [0, 0],
 'parked': [{'body': 'job-1',
             'headers': {'attempt-info': 'x',
                         'x-death': [{'count': ('I', 3),
                                      'exchange': 'retry_x',
                                      'queue': 'retry',
                                      'reason': 'expired',
                                      'routing-keys': ['task'],
                                      'time': '<now>'},
                                     {'count': ('I', 3),
                                      'exchange': 'work_x',
                                      'queue': 'work',
                                      'reason': 'rejected',
                                      'routing-keys': ['task'],
                                      'time': '<now>'}],
                         'x-first-death-exchange': 'work_x',
                         'x-first-death-queue': 'work',
                         'x-first-death-reason': 'rejected'},
             'rk': 'parking',
             'x': ''}],
 'parking_count': 1,
 'rounds': [{'msg': {'body': 'job-1',
                     'headers': {'attempt-info': 'x'},
                     'redelivered': False,
                     'rk': 'task',
                     'x': 'work_x'},
             'seen_rejections': 0},
            {'msg': {'body': 'job-1',
                     'headers': {'attempt-info': 'x',
                                 'x-death': [{'count': ('l', 1),
                                              'exchange': 'retry_x',
                                              'queue': 'retry',
                                              'reason': 'expired',
                                              'routing-keys': ['task'],
                                              'time': '<now>'},
                                             {'count': ('l', 1),
                                              'exchange': 'work_x',
                                              'queue': 'work',
                                              'reason': 'rejected',
                                              'routing-keys': ['task'],
                                              'time': '<now>'}],
                                 'x-first-death-exchange': 'work_x',
                                 'x-first-death-queue': 'work',
                                 'x-first-death-reason': 'rejected'},
                     'redelivered': False,
                     'rk': 'task',
                     'x': 'work_x'},
             'seen_rejections': 1},
            {'msg': {'body': 'job-1',
                     'headers': {'attempt-info': 'x',
                                 'x-death': [{'count': ('l', 2),
                                              'exchange': 'retry_x',
                                              'queue': 'retry',
                                              'reason': 'expired',
                                              'routing-keys': ['task'],
                                              'time': '<now>'},
                                             {'count': ('l', 2),
                                              'exchange': 'work_x',
                                              'queue': 'work',
                                              'reason': 'rejected',
                                              'routing-keys': ['task'],
                                              'time': '<now>'}],
                                 'x-first-death-exchange': 'work_x',
                                 'x-first-death-queue': 'work',
                                 'x-first-death-reason': 'rejected'},
                     'redelivered': False,
                     'rk': 'task',
                     'x': 'work_x'},
             'seen_rejections': 2},
            {'msg': {'body': 'job-1',
                     'headers': {'attempt-info': 'x',
                                 'x-death': [{'count': ('l', 3),
                                              'exchange': 'retry_x',
                                              'queue': 'retry',
                                              'reason': 'expired',
                                              'routing-keys': ['task'],
                                              'time': '<now>'},
                                             {'count': ('l', 3),
                                              'exchange': 'work_x',
                                              'queue': 'work',
                                              'reason': 'rejected',
                                              'routing-keys': ['task'],
                                              'time': '<now>'}],
                                 'x-first-death-exchange': 'work_x',
                                 'x-first-death-queue': 'work',
                                 'x-first-death-reason': 'rejected'},
                     'redelivered': False,
                     'rk': 'task',
                     'x': 'work_x'},
             'seen_rejections': 3}]}

EXPECTED_MAX_LENGTH = {'both_limits_left': ['33', '44'],
 'drop_head_dead': [{'body': 'L1',
                     'headers': {'x-death': [{'count': ('l', 1),
                                              'exchange': '',
                                              'original-expiration': '60000',
                                              'queue': 'q',
                                              'reason': 'maxlen',
                                              'routing-keys': ['q'],
                                              'time': '<now>'}],
                                 'x-first-death-exchange': '',
                                 'x-first-death-queue': 'q',
                                 'x-first-death-reason': 'maxlen'},
                     'rk': 'q',
                     'x': 'dlx'},
                    {'body': 'L2',
                     'headers': {'x-death': [{'count': ('l', 1),
                                              'exchange': '',
                                              'original-expiration': '60000',
                                              'queue': 'q',
                                              'reason': 'maxlen',
                                              'routing-keys': ['q'],
                                              'time': '<now>'}],
                                 'x-first-death-exchange': '',
                                 'x-first-death-queue': 'q',
                                 'x-first-death-reason': 'maxlen'},
                     'rk': 'q',
                     'x': 'dlx'}],
 'drop_head_left': ['L3', 'L4'],
 'max_bytes_dead': [['B001', 'maxlen'], ['B002', 'maxlen']],
 'max_bytes_left': ['B003', 'B004'],
 'max_bytes_oversized': [0, ['XXXXXXXXXXX']],
 'max_length_0': [0, ['zero-len']]}

EXPECTED_REJECT_PUBLISH = {'bad_max_length': [406,
                    "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'q_bad_maxlen' in "
                    "vhost '/': {value_negative,-1}"],
 'bad_overflow': [406,
                  "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'q_bad_overflow' in "
                  "vhost '/': invalid_overflow"],
 'reject_publish': ['ack', 'ack', ['nack', []]],
 'reject_publish_after_drain': ['ack', ['nack', []]],
 'reject_publish_bytes': ['ack', 'ack', ['nack', []]],
 'reject_publish_bytes_left': ['abc', 'de'],
 'reject_publish_dlx': ['ack', ['nack', []]],
 'reject_publish_dlx_dead': [{'body': 'D2',
                              'headers': {'x-death': [{'count': ('l', 1),
                                                       'exchange': '',
                                                       'queue': 'qd',
                                                       'reason': 'maxlen',
                                                       'routing-keys': ['qd'],
                                                       'time': '<now>'}],
                                          'x-first-death-exchange': '',
                                          'x-first-death-queue': 'qd',
                                          'x-first-death-reason': 'maxlen'},
                              'rk': 'qd',
                              'x': 'dlx'}],
 'reject_publish_dlx_left': ['D1'],
 'reject_publish_len0': ['nack', []],
 'reject_publish_no_confirm': [True, ['n1']],
 'reject_publish_state': [0, ['P1', 'P2']],
 'two_queues_one_full': 'nack',
 'two_queues_one_full_room': ['two-queues']}

EXPECTED_CYCLES = {'expire_reject_cycle': [{'body': 'expire-reject',
                          'headers': {'x-death': [{'count': ('l', 1),
                                                   'exchange': '',
                                                   'queue': 'G',
                                                   'reason': 'expired',
                                                   'routing-keys': ['G'],
                                                   'time': '<now>'}],
                                      'x-first-death-exchange': '',
                                      'x-first-death-queue': 'G',
                                      'x-first-death-reason': 'expired'},
                          'rk': 'G',
                          'x': 'fg'},
                         {'body': 'expire-reject',
                          'headers': {'x-death': [{'count': ('l', 2),
                                                   'exchange': '',
                                                   'queue': 'G',
                                                   'reason': 'expired',
                                                   'routing-keys': ['G'],
                                                   'time': '<now>'},
                                                  {'count': ('l', 1),
                                                   'exchange': 'fg',
                                                   'queue': 'H',
                                                   'reason': 'rejected',
                                                   'routing-keys': ['G'],
                                                   'time': '<now>'}],
                                      'x-first-death-exchange': '',
                                      'x-first-death-queue': 'G',
                                      'x-first-death-reason': 'expired'},
                          'rk': 'G',
                          'x': 'fg'},
                         {'body': 'expire-reject',
                          'headers': {'x-death': [{'count': ('l', 3),
                                                   'exchange': '',
                                                   'queue': 'G',
                                                   'reason': 'expired',
                                                   'routing-keys': ['G'],
                                                   'time': '<now>'},
                                                  {'count': ('l', 2),
                                                   'exchange': 'fg',
                                                   'queue': 'H',
                                                   'reason': 'rejected',
                                                   'routing-keys': ['G'],
                                                   'time': '<now>'}],
                                      'x-first-death-exchange': '',
                                      'x-first-death-queue': 'G',
                                      'x-first-death-reason': 'expired'},
                          'rk': 'G',
                          'x': 'fg'}],
 'pair_expire': {'B': 0,
                 'C': 0,
                 'monitor': [{'body': 'pair-expire',
                              'headers': {'x-death': [{'count': ('l', 1),
                                                       'exchange': '',
                                                       'queue': 'B',
                                                       'reason': 'expired',
                                                       'routing-keys': ['B'],
                                                       'time': '<now>'}],
                                          'x-first-death-exchange': '',
                                          'x-first-death-queue': 'B',
                                          'x-first-death-reason': 'expired'},
                              'rk': 'B',
                              'x': 'fb'},
                             {'body': 'pair-expire',
                              'headers': {'x-death': [{'count': ('l', 1),
                                                       'exchange': 'fb',
                                                       'queue': 'C',
                                                       'reason': 'expired',
                                                       'routing-keys': ['B'],
                                                       'time': '<now>'},
                                                      {'count': ('l', 1),
                                                       'exchange': '',
                                                       'queue': 'B',
                                                       'reason': 'expired',
                                                       'routing-keys': ['B'],
                                                       'time': '<now>'}],
                                          'x-first-death-exchange': '',
                                          'x-first-death-queue': 'B',
                                          'x-first-death-reason': 'expired'},
                              'rk': 'B',
                              'x': 'fc'}]},
 'reject_then_expire': {'E': 0,
                        'monitor_after_expiry': [{'body': 'reject-then-expire',
                                                  'headers': {'x-death': [{'count': ('l', 1),
                                                                           'exchange': 'fe',
                                                                           'queue': 'E',
                                                                           'reason': 'expired',
                                                                           'routing-keys': ['E'],
                                                                           'time': '<now>'},
                                                                          {'count': ('l', 1),
                                                                           'exchange': '',
                                                                           'queue': 'E',
                                                                           'reason': 'rejected',
                                                                           'routing-keys': ['E'],
                                                                           'time': '<now>'}],
                                                              'x-first-death-exchange': '',
                                                              'x-first-death-queue': 'E',
                                                              'x-first-death-reason': 'rejected'},
                                                  'rk': 'E',
                                                  'x': 'fe'}],
                        'monitor_after_reject': [{'body': 'reject-then-expire',
                                                  'headers': {'x-death': [{'count': ('l', 1),
                                                                           'exchange': '',
                                                                           'queue': 'E',
                                                                           'reason': 'rejected',
                                                                           'routing-keys': ['E'],
                                                                           'time': '<now>'}],
                                                              'x-first-death-exchange': '',
                                                              'x-first-death-queue': 'E',
                                                              'x-first-death-reason': 'rejected'},
                                                  'rk': 'E',
                                                  'x': 'fe'}]},
 'self_expire': {'A': 0,
                 'monitor': [{'body': 'self-expire',
                              'headers': {'x-death': [{'count': ('l', 1),
                                                       'exchange': '',
                                                       'queue': 'A',
                                                       'reason': 'expired',
                                                       'routing-keys': ['A'],
                                                       'time': '<now>'}],
                                          'x-first-death-exchange': '',
                                          'x-first-death-queue': 'A',
                                          'x-first-death-reason': 'expired'},
                              'rk': 'A',
                              'x': 'fa'}]},
 'self_reject': [{'body': 'self-reject', 'rk': 'R', 'x': ''},
                 {'body': 'self-reject',
                  'headers': {'x-death': [{'count': ('l', 1),
                                           'exchange': '',
                                           'queue': 'R',
                                           'reason': 'rejected',
                                           'routing-keys': ['R'],
                                           'time': '<now>'}],
                              'x-first-death-exchange': '',
                              'x-first-death-queue': 'R',
                              'x-first-death-reason': 'rejected'},
                  'rk': 'R',
                  'x': ''},
                 {'body': 'self-reject',
                  'headers': {'x-death': [{'count': ('l', 2),
                                           'exchange': '',
                                           'queue': 'R',
                                           'reason': 'rejected',
                                           'routing-keys': ['R'],
                                           'time': '<now>'}],
                              'x-first-death-exchange': '',
                              'x-first-death-queue': 'R',
                              'x-first-death-reason': 'rejected'},
                  'rk': 'R',
                  'x': ''},
                 {'body': 'self-reject',
                  'headers': {'x-death': [{'count': ('l', 3),
                                           'exchange': '',
                                           'queue': 'R',
                                           'reason': 'rejected',
                                           'routing-keys': ['R'],
                                           'time': '<now>'}],
                              'x-first-death-exchange': '',
                              'x-first-death-queue': 'R',
                              'x-first-death-reason': 'rejected'},
                  'rk': 'R',
                  'x': ''}]}

EXPECTED_PRIORITY = {'consume_order': ['m03-p10', 'm05-p20', 'm07-p255', 'm11-p10', 'm02-p5', 'm04-p5', 'm08-p3',
                   'm01-p1', 'm09-p1', 'm00-pNone', 'm06-p0', 'm10-pNone'],
 'get_order': [['m03-p10', 10], ['m05-p20', 20], ['m07-p255', 255], ['m11-p10', 10], ['m02-p5', 5],
               ['m04-p5', 5], ['m08-p3', 3], ['m01-p1', 1], ['m09-p1', 1], ['m00-pNone', None],
               ['m06-p0', 0], ['m10-pNone', None]],
 'max_priority_2': ['s1-p3', 's3-p2', 's4-p200', 's2-p1', 's0-p0', 's5-pNone'],
 'no_max_priority': ['f0-p1', 'f1-p9', 'f2-p5'],
 'requeue_order': [['r1-p9', 'pq'], ['late-p7', 'pq'], ['r2-p5', 'pq'], ['r0-p1', 'pq']],
 'x-max-priority 255': 'ok',
 'x-max-priority 256': [406,
                        "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'pq_256' in "
                        "vhost '/': {max_value_exceeded,256}"],
 'x-max-priority neg': [406,
                        "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'pq_neg' in "
                        "vhost '/': {value_negative,-1}"],
 'x-max-priority string': [406,
                           "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue "
                           '\'pq_string\' in vhost \'/\': "expected integer, got longstr"'],
 'x-max-priority zero': 'ok'}

EXPECTED_DELIVERY_LIMIT_QUORUM = {'dead': [{'body': 'poison',
           'headers': {'h': ('I', 1),
                       'x-death': [{'count': ('l', 1),
                                    'exchange': '',
                                    'queue': 'lq',
                                    'reason': 'delivery_limit',
                                    'routing-keys': ['lq'],
                                    'time': '<now>'}],
                       'x-first-death-exchange': '',
                       'x-first-death-queue': 'lq',
                       'x-first-death-reason': 'delivery_limit'},
           'props': {'delivery_mode': 2},
           'rk': 'lq',
           'x': 'dlx'}],
 'deliveries': [{'body': 'poison',
                 'headers': {'h': ('I', 1)},
                 'props': {'delivery_mode': 2},
                 'redelivered': False,
                 'rk': 'lq',
                 'x': ''},
                {'body': 'poison',
                 'headers': {'h': ('I', 1), 'x-delivery-count': ('l', 1)},
                 'props': {'delivery_mode': 2},
                 'redelivered': True,
                 'rk': 'lq',
                 'x': ''},
                {'body': 'poison',
                 'headers': {'h': ('I', 1), 'x-delivery-count': ('l', 2)},
                 'props': {'delivery_mode': 2},
                 'redelivered': True,
                 'rk': 'lq',
                 'x': ''}],
 'left': 0}

EXPECTED_DELIVERY_LIMIT_QUORUM_REJECT = {'dead': [{'body': 'poison',
           'headers': {'h': ('I', 1),
                       'x-death': [{'count': ('l', 1),
                                    'exchange': '',
                                    'queue': 'lq',
                                    'reason': 'delivery_limit',
                                    'routing-keys': ['lq'],
                                    'time': '<now>'}],
                       'x-first-death-exchange': '',
                       'x-first-death-queue': 'lq',
                       'x-first-death-reason': 'delivery_limit'},
           'props': {'delivery_mode': 2},
           'rk': 'lq',
           'x': 'dlx'}],
 'deliveries': [{'body': 'poison',
                 'headers': {'h': ('I', 1)},
                 'props': {'delivery_mode': 2},
                 'redelivered': False,
                 'rk': 'lq',
                 'x': ''},
                {'body': 'poison',
                 'headers': {'h': ('I', 1), 'x-delivery-count': ('l', 1)},
                 'props': {'delivery_mode': 2},
                 'redelivered': True,
                 'rk': 'lq',
                 'x': ''},
                {'body': 'poison',
                 'headers': {'h': ('I', 1), 'x-delivery-count': ('l', 2)},
                 'props': {'delivery_mode': 2},
                 'redelivered': True,
                 'rk': 'lq',
                 'x': ''}],
 'left': 0}

EXPECTED_DIRECT_REPLY_TO = {'passive_declare': ['amq.rabbitmq.reply-to', 0, 1],
 'replies': [{'body': 'reply-to-request-0',
              'props': {'correlation_id': 'c0'},
              'redelivered': False,
              'rk': 'amq.rabbitmq.reply-to.<token>',
              'x': ''},
             {'body': 'reply-to-request-1',
              'props': {'correlation_id': 'c1'},
              'redelivered': False,
              'rk': 'amq.rabbitmq.reply-to.<token>',
              'x': ''}],
 'reply_after_close': ['unroutable', [[312, 'NO_ROUTE']]],
 'reply_rk_is_reply_to': True,
 'reply_to_tokens_equal': True,
 'requests': [['amq.rabbitmq.reply-to.<token>', 'c0', 'request-0'],
              ['amq.rabbitmq.reply-to.<token>', 'c1', 'request-1']]}

EXPECTED_DIRECT_REPLY_TO_ERRORS = {'consume_manual_ack': [406, 'PRECONDITION_FAILED - reply consumer cannot acknowledge'],
 'consume_twice': [406, 'PRECONDITION_FAILED - reply consumer already set'],
 'publish_bogus_token': ['unroutable', [[312, 'NO_ROUTE']]],
 'publish_without_consumer': [406, 'PRECONDITION_FAILED - fast reply consumer does not exist'],
 'server_q_count': 0}


# ---------------------------------------------------------------------------------------------
# Tests: each observation runs once per session (cached); one test per recorded key.
# ---------------------------------------------------------------------------------------------

_results = {}


def observed(port, var):
    """Run the observation behind EXPECTED table `var` once against `port` and cache it."""
    if (port, var) not in _results:
        fn = dict(OBSERVATIONS)[var]
        try:
            _results[(port, var)] = ("ok", fn(port))
        except Exception as e:  # report the same failure for every key of the table
            _results[(port, var)] = ("error", "%s: %s" % (type(e).__name__, e))
    status, value = _results[(port, var)]
    if status == "error":
        pytest.fail("observation %s failed: %s" % (var, value))
    return value


def check(port, var, key):
    got = observed(port, var)
    expected = globals().get(var) or {}
    assert key in got, "observation %s produced no %r (got keys %s)" % (var, key, sorted(got))
    assert got[key] == expected[key]


def keys(var):
    return sorted(globals().get(var) or {})


@pytest.mark.parametrize("key", keys("EXPECTED_REJECT"))
def test_reject_nack_dead_letter(port, key):
    check(port, "EXPECTED_REJECT", key)


@pytest.mark.parametrize("key", keys("EXPECTED_CC"))
def test_dead_letter_cc_headers(port, key):
    check(port, "EXPECTED_CC", key)


@pytest.mark.parametrize("key", keys("EXPECTED_TWICE"))
def test_dead_lettered_twice_same_queue(port, key):
    check(port, "EXPECTED_TWICE", key)


@pytest.mark.parametrize("key", keys("EXPECTED_TWO_QUEUES"))
def test_dead_lettered_through_two_queues(port, key):
    check(port, "EXPECTED_TWO_QUEUES", key)


@pytest.mark.parametrize("key", keys("EXPECTED_TTL"))
def test_message_ttl(port, key):
    check(port, "EXPECTED_TTL", key)


@pytest.mark.parametrize("key", keys("EXPECTED_TTL_ZERO"))
def test_ttl_zero(port, key):
    check(port, "EXPECTED_TTL_ZERO", key)


@pytest.mark.parametrize("key", keys("EXPECTED_EXPIRY_WITHOUT_CONSUMER"))
def test_expiry_without_consumer(port, key):
    check(port, "EXPECTED_EXPIRY_WITHOUT_CONSUMER", key)


@pytest.mark.parametrize("key", keys("EXPECTED_INVALID_EXPIRATION"))
def test_invalid_expiration(port, key):
    check(port, "EXPECTED_INVALID_EXPIRATION", key)


@pytest.mark.parametrize("key", keys("EXPECTED_INVALID_TTL_ARGS"))
def test_invalid_ttl_and_dlx_args(port, key):
    check(port, "EXPECTED_INVALID_TTL_ARGS", key)


@pytest.mark.parametrize("key", keys("EXPECTED_RETRY"))
def test_retry_pattern(port, key):
    check(port, "EXPECTED_RETRY", key)


@pytest.mark.parametrize("key", keys("EXPECTED_MAX_LENGTH"))
def test_max_length_drop_head(port, key):
    check(port, "EXPECTED_MAX_LENGTH", key)


@pytest.mark.parametrize("key", keys("EXPECTED_REJECT_PUBLISH"))
def test_overflow_reject_publish(port, key):
    check(port, "EXPECTED_REJECT_PUBLISH", key)


@pytest.mark.parametrize("key", keys("EXPECTED_CYCLES"))
def test_dead_letter_cycles(port, key):
    check(port, "EXPECTED_CYCLES", key)


@pytest.mark.parametrize("key", keys("EXPECTED_PRIORITY"))
def test_priority_queue(port, key):
    check(port, "EXPECTED_PRIORITY", key)


@pytest.mark.parametrize("key", keys("EXPECTED_DELIVERY_LIMIT_QUORUM"))
def test_delivery_limit_quorum_nack(port, key):
    check(port, "EXPECTED_DELIVERY_LIMIT_QUORUM", key)


@pytest.mark.parametrize("key", keys("EXPECTED_DELIVERY_LIMIT_QUORUM_REJECT"))
def test_delivery_limit_quorum_reject(port, key):
    check(port, "EXPECTED_DELIVERY_LIMIT_QUORUM_REJECT", key)


def server_product(port):
    c = pika.BlockingConnection(params(port))
    try:
        p = (c._impl.server_properties or {}).get("product")
        return p.decode() if isinstance(p, bytes) else p
    finally:
        close_quietly(c)


@pytest.mark.parametrize("key", keys("EXPECTED_DELIVERY_LIMIT_QUORUM"))
def test_delivery_limit_classic_queue_warren_only(port, key):
    """Warren extension: x-delivery-limit on a plain classic queue behaves like RabbitMQ's
    quorum queue (RabbitMQ 3.10 ignores the argument on classic queues)."""
    if server_product(port) != "Warren":
        pytest.skip("x-delivery-limit on classic queues is a Warren extension")
    if ("classic", port) not in _results:
        _results[("classic", port)] = observe_delivery_limit_classic(port)
    got = _results[("classic", port)]
    assert got[key] == globals()["EXPECTED_DELIVERY_LIMIT_QUORUM"][key]


@pytest.mark.parametrize("key", keys("EXPECTED_DIRECT_REPLY_TO"))
def test_direct_reply_to(port, key):
    check(port, "EXPECTED_DIRECT_REPLY_TO", key)


@pytest.mark.parametrize("key", keys("EXPECTED_DIRECT_REPLY_TO_ERRORS"))
def test_direct_reply_to_errors(port, key):
    check(port, "EXPECTED_DIRECT_REPLY_TO_ERRORS", key)


# ---------------------------------------------------------------------------------------------
# Recording: python test_dead_letter.py record PORT [NAME ...]   (prints the tables above)
# ---------------------------------------------------------------------------------------------

OBSERVATIONS = [
    ("EXPECTED_REJECT", observe_reject),
    ("EXPECTED_CC", observe_cc),
    ("EXPECTED_TWICE", observe_twice),
    ("EXPECTED_TWO_QUEUES", observe_two_queues),
    ("EXPECTED_TTL", observe_ttl),
    ("EXPECTED_TTL_ZERO", observe_ttl_zero),
    ("EXPECTED_EXPIRY_WITHOUT_CONSUMER", observe_expiry_without_consumer),
    ("EXPECTED_INVALID_EXPIRATION", observe_invalid_expiration),
    ("EXPECTED_INVALID_TTL_ARGS", observe_invalid_ttl_args),
    ("EXPECTED_RETRY", observe_retry),
    ("EXPECTED_MAX_LENGTH", observe_max_length),
    ("EXPECTED_REJECT_PUBLISH", observe_reject_publish),
    ("EXPECTED_CYCLES", observe_cycles),
    ("EXPECTED_PRIORITY", observe_priority),
    ("EXPECTED_DELIVERY_LIMIT_QUORUM", observe_delivery_limit_quorum),
    ("EXPECTED_DELIVERY_LIMIT_QUORUM_REJECT", observe_delivery_limit_quorum_reject),
    ("EXPECTED_DIRECT_REPLY_TO", observe_direct_reply_to),
    ("EXPECTED_DIRECT_REPLY_TO_ERRORS", observe_direct_reply_to_errors),
]

if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "record":
        p = int(sys.argv[2]) if len(sys.argv) > 2 else 5680
        only = sys.argv[3:]
        for var, fn in OBSERVATIONS:
            if only and var not in only:
                continue
            try:
                res = fn(p)
            except Exception as e:  # keep recording the others
                print("# %s failed: %s: %s\n" % (var, type(e).__name__, e))
                continue
            print("%s = %s\n" % (var, pprint.pformat(res, width=100, compact=True,
                                                     sort_dicts=True)))
    else:
        print(__doc__)
