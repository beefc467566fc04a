#!/usr/bin/env python3
"""Regenerate the seed corpora in fuzz/corpus/ from real traffic.

Starts the Warren release binary with a fresh --data-dir, puts a small recording TCP proxy in
front of it, and drives it with pika (the real client traffic the frame and method targets
start from): handshake, durable exchange/queues/bindings with arguments, persistent publishes
with rich headers (nested tables, arrays, CC/BCC), publisher confirms, basic.get, consume,
ack/reject/nack, qos, tx, queue delete. Then stops the broker with SIGTERM and takes its
message-log segment and definitions.json as the seeds of log_recovery and definitions.
amqp_raw.py (integration/python) adds hand-built frames pika never sends (AMQPLAIN, a lower
frame_max, bodies split across frames).

Run from anywhere, with the integration venv (it has pika):

    integration/.venv/bin/python fuzz/seeds/capture.py

WARREN_BIN overrides the broker binary (default target/release/warren). Output replaces the
files this script writes in fuzz/corpus/<target>/ (named, not hashed, so reruns overwrite).
"""
import datetime
import decimal
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = os.path.dirname(HERE)
ROOT = os.path.dirname(FUZZ)
CORPUS = os.path.join(FUZZ, "corpus")
sys.path.insert(0, os.path.join(ROOT, "integration", "python"))

import amqp_raw as raw  # noqa: E402
import pika  # noqa: E402

LISTENING = re.compile(r"listening for AMQP 0-9-1 connections on ([0-9.]+):(\d+)")
METHODS = {
    (10, 10): "connection.start", (10, 11): "connection.start-ok",
    (10, 20): "connection.secure", (10, 21): "connection.secure-ok",
    (10, 30): "connection.tune", (10, 31): "connection.tune-ok",
    (10, 40): "connection.open", (10, 41): "connection.open-ok",
    (10, 50): "connection.close", (10, 51): "connection.close-ok",
    (20, 10): "channel.open", (20, 11): "channel.open-ok",
    (20, 40): "channel.close", (20, 41): "channel.close-ok",
    (40, 10): "exchange.declare", (40, 11): "exchange.declare-ok",
    (40, 30): "exchange.bind", (40, 31): "exchange.bind-ok",
    (50, 10): "queue.declare", (50, 11): "queue.declare-ok",
    (50, 20): "queue.bind", (50, 21): "queue.bind-ok",
    (50, 30): "queue.purge", (50, 31): "queue.purge-ok",
    (50, 40): "queue.delete", (50, 41): "queue.delete-ok",
    (60, 10): "basic.qos", (60, 11): "basic.qos-ok",
    (60, 20): "basic.consume", (60, 21): "basic.consume-ok",
    (60, 30): "basic.cancel", (60, 31): "basic.cancel-ok",
    (60, 40): "basic.publish", (60, 60): "basic.deliver",
    (60, 70): "basic.get", (60, 71): "basic.get-ok", (60, 72): "basic.get-empty",
    (60, 80): "basic.ack", (60, 90): "basic.reject",
    (60, 110): "basic.recover", (60, 111): "basic.recover-ok", (60, 120): "basic.nack",
    (85, 10): "confirm.select", (85, 11): "confirm.select-ok",
    (90, 10): "tx.select", (90, 11): "tx.select-ok",
    (90, 20): "tx.commit", (90, 21): "tx.commit-ok",
}
# Index of each frame_max in the frame_decoder target's table (first input byte).
FRAME_MAX_SEL = {0: 0, 4096: 1, 131072: 2}


# ------------------------------------------------------------------------------------------
# Broker and recording proxy
# ------------------------------------------------------------------------------------------

def start_broker(data_dir):
    binary = os.environ.get("WARREN_BIN", os.path.join(ROOT, "target", "release", "warren"))
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", "0", "--log-level", "info",
         "--data-dir", data_dir],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = LISTENING.search(line)
        if m:
            # Keep draining the log so the broker never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(m.group(2))
    proc.kill()
    raise RuntimeError("warren did not start")


class Proxy:
    """Accepts connections on a loopback port, forwards them to the broker, and records the
    bytes of each connection in both directions."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []  # [client->server bytearray, server->client bytearray]
        self.threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            rec = [bytearray(), bytearray()]
            self.conns.append(rec)
            for src, dst, buf in ((client, server, rec[0]), (server, client, rec[1])):
                t = threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True)
                t.start()
                self.threads.append(t)

    @staticmethod
    def _pump(src, dst, buf):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()
        for t in self.threads:
            t.join(5)


# ------------------------------------------------------------------------------------------
# The client session
# ------------------------------------------------------------------------------------------

# Headers as amqp_raw encodes them (floats as 'd')...
HEADERS = {
    "str": "value", "int": 42, "neg": -7, "big": 2 ** 40, "float": 1.5, "bool": True,
    "none": None, "bytes": b"\x00\xff", "list": [1, "two", [3.0, {"four": 4}]],
    "nested": {"a": {"b": {"c": ["d", {"e": None}]}}}, "ts": 1700000000,
}
# ...and as pika does (no floats: decimals 'D' and timestamps 'T' instead).
PIKA_HEADERS = dict(HEADERS, float=decimal.Decimal("1.5"),
                    ts=datetime.datetime(2023, 11, 14, 22, 13, 20),
                    list=[1, "two", [decimal.Decimal("-3.25"), {"four": 4}]])


def pika_session(port):
    params = pika.ConnectionParameters(
        host="127.0.0.1", port=port, heartbeat=0, blocked_connection_timeout=10,
        credentials=pika.PlainCredentials("guest", "guest"),
        client_properties={"connection_name": "fuzz-seed-capture"})
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.exchange_declare("fuzz.ae", "fanout", durable=True)
    ch.exchange_declare("fuzz.x", "topic", durable=True,
                        arguments={"alternate-exchange": "fuzz.ae"})
    ch.exchange_declare("fuzz.h", "headers", durable=True)
    ch.queue_declare("fuzz.q", durable=True, arguments={
        "x-max-length": 1000, "x-message-ttl": 3600000, "x-max-priority": 5,
        "x-delivery-limit": 5, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "fuzz.dlq"})
    ch.queue_declare("fuzz.dlq", durable=True)
    ch.queue_declare("fuzz.gone", durable=True)
    ch.queue_declare("", exclusive=True)  # server-named, not durable
    ch.queue_bind("fuzz.q", "fuzz.x", "a.*")
    ch.queue_bind("fuzz.dlq", "fuzz.ae")
    ch.queue_bind("fuzz.q", "fuzz.h", "", arguments={"x-match": "all", "k": "v", "n": 1})
    ch.exchange_bind("fuzz.x", "fuzz.h", "", arguments={"x-match": "any", "route": "x"})
    ch.basic_qos(prefetch_count=10)
    ch.confirm_delivery()
    persistent = dict(delivery_mode=2, content_type="application/json",
                      content_encoding="utf-8", priority=3, correlation_id="corr-1",
                      reply_to="fuzz.reply", expiration="600000", message_id="m-1",
                      timestamp=1700000000, type="t", user_id="guest", app_id="capture")
    ch.basic_publish("fuzz.x", "a.b", b'{"n": 1}', pika.BasicProperties(
        headers=PIKA_HEADERS, **persistent))
    ch.basic_publish("fuzz.x", "a.c", b"second", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("fuzz.x", "a.d", b"cc", pika.BasicProperties(
        delivery_mode=2, headers={"CC": ["fuzz.gone"], "BCC": ["fuzz.dlq"]}))
    ch.basic_publish("", "fuzz.gone", b"to be deleted", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("fuzz.x", "unrouted", b"alternate", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("fuzz.h", "", b"by headers", pika.BasicProperties(
        delivery_mode=2, headers={"k": "v", "n": 1}))
    ch.basic_publish("", "fuzz.q", b"transient", pika.BasicProperties(delivery_mode=1))
    for i in range(3):
        ch.basic_publish("", "fuzz.q", b"p%d" % i, pika.BasicProperties(
            delivery_mode=2, priority=i, headers={"i": i}))
    # basic.get + ack (remove record), get + reject/requeue (delivered, count records).
    m, _, _ = ch.basic_get("fuzz.q")
    ch.basic_ack(m.delivery_tag)
    m, _, _ = ch.basic_get("fuzz.q")
    ch.basic_reject(m.delivery_tag, requeue=True)
    # A consumer: take a few, ack one, nack one back, leave the rest unacked.
    got = []
    tag = ch.basic_consume("fuzz.q", lambda c, meth, props, body: got.append(meth.delivery_tag),
                           arguments={"x-priority": 1})
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    if got:
        ch.basic_ack(got[0])
    if len(got) > 1:
        ch.basic_nack(got[1], requeue=True)
    ch.basic_cancel(tag)
    ch.basic_recover(requeue=True)
    ch.queue_delete("fuzz.gone")
    # Transactions on a second channel.
    ch2 = conn.channel()
    ch2.tx_select()
    ch2.basic_publish("", "fuzz.dlq", b"in tx", pika.BasicProperties(delivery_mode=2))
    ch2.tx_commit()
    ch2.queue_purge("fuzz.dlq")
    ch2.close()
    ch.close()
    conn.close()


# ------------------------------------------------------------------------------------------
# Frame helpers
# ------------------------------------------------------------------------------------------

def split_frames(stream):
    """The frames of a recorded stream, after the protocol header if it starts with one:
    (type, channel, payload) each; stops at a torn frame."""
    if stream.startswith(b"AMQP"):
        stream = stream[8:]
    frames, pos = [], 0
    while pos + 7 <= len(stream):
        ty, ch, size = struct.unpack_from(">BHI", stream, pos)
        if pos + 8 + size > len(stream):
            break
        frames.append((ty, ch, bytes(stream[pos + 7:pos + 7 + size])))
        pos += 8 + size
    return frames


def frame_bytes(frames):
    return b"".join(raw.frame(ty, ch, p) for ty, ch, p in frames)


def amqp_raw_streams():
    """Client streams pika does not produce, built with amqp_raw (frames only, no header)."""
    amqplain = raw.table({"LOGIN": "guest", "PASSWORD": "guest"})[4:]
    handshake = (raw.start_ok(mechanism="AMQPLAIN", response=amqplain)
                 + raw.tune_ok(frame_max=4096, heartbeat=30)
                 + raw.connection_open("/"))
    session = (raw.channel_open(1)
               + raw.queue_declare(1, "raw.q", durable=True, arguments={
                   "x-max-length": 10, "x-overflow": "reject-publish",
                   "nested": {"arr": [1, True, None, 2.5, {"t": "u"}]},
                   "odd": raw.RawValue(b"D", b"\x02\x00\x00\x01\x00")})
               + raw.basic_qos(1, prefetch_count=5)
               + raw.publish_message(1, b"x" * 9000, routing_key="raw.q", frame_max=4096,
                                     delivery_mode=2, headers={"h": ["a", {"b": 1}]},
                                     priority=1, expiration="1000")
               + raw.method_frame(1, 60, 20, raw.short(0) + raw.shortstr("raw.q")
                                  + raw.shortstr("ctag") + raw.bits(False, False, False, False)
                                  + raw.table({"x-priority": 2}))  # basic.consume
               + raw.method_frame(1, 60, 80, raw.longlong(1) + raw.bits(False))  # basic.ack
               + raw.heartbeat_frame()
               + raw.channel_close(1)
               + raw.connection_close())
    return {"amqp_raw_amqplain_4096": (4096, handshake + session)}


# ------------------------------------------------------------------------------------------
# Message log helpers
# ------------------------------------------------------------------------------------------

HEADER = 16  # magic u32 | len u32 | crc32(payload) u32 | crc32(header[0:12]) u32


def records(segment):
    """(payload, loc offset) of each record of a segment file."""
    out, pos = [], 0
    while pos + HEADER <= len(segment):
        (n,) = struct.unpack_from(">I", segment, pos + 4)
        if pos + HEADER + n > len(segment):
            break
        out.append((segment[pos + HEADER:pos + HEADER + n], pos))
        pos += HEADER + n
    return out


def framed(mode_bits, segments):
    """The log_recovery target's framed form: records as `hdr u16 | payload`, the harness
    writes the record header; hdr bit 15 starts the next segment."""
    out = bytearray([1 | mode_bits])
    for i, recs in enumerate(segments):
        for j, payload in enumerate(recs):
            hdr = len(payload)
            assert hdr < 0x2000, "record too large for the framed form"
            if i > 0 and j == 0:
                hdr |= 0x8000
            out += struct.pack(">H", hdr) + payload
    return bytes(out)


def split_into_two_segments(recs):
    """Move the second half of a segment's records into segment 2, fixing the locations that
    later records refer to (remove/delivered/count records, compaction `from`/`order`)."""
    half = len(recs) // 2
    new_loc, seg, off = {}, 1, 0
    for i, (payload, old_off) in enumerate(recs):
        if i == half:
            seg, off = 2, 0
        new_loc[(1 << 32) | old_off] = (seg << 32) | off
        off += HEADER + len(payload)
    fixed = []
    for payload, _ in recs:
        p = bytearray(payload)
        if p and p[0] in (2, 3, 4):
            (loc,) = struct.unpack_from(">Q", p, 1)
            struct.pack_into(">Q", p, 1, new_loc.get(loc, loc))
        elif p and p[0] == 1:
            for at in (1, 9):  # order, from
                (loc,) = struct.unpack_from(">Q", p, at)
                if loc:
                    struct.pack_into(">Q", p, at, new_loc.get(loc, loc))
        fixed.append(bytes(p))
    return [fixed[:half], fixed[half:]]


# ------------------------------------------------------------------------------------------

def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    data_dir = tempfile.mkdtemp(prefix="warren-seeds-")
    try:
        capture(data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    total = sum(os.path.getsize(os.path.join(dp, f))
                for dp, _, fs in os.walk(CORPUS) for f in fs)
    print("seed corpus: %d files, %d bytes" % (
        sum(len(fs) for _, _, fs in os.walk(CORPUS)), total))


def capture(data_dir):
    broker, port = start_broker(data_dir)
    try:
        proxy = Proxy(port)
        pika_session(proxy.port)
        time.sleep(0.3)
        proxy.close()
    finally:
        broker.send_signal(signal.SIGTERM)
        code = broker.wait(10)
    if code != 0:
        raise SystemExit("broker exited with %d" % code)
    client, server = (bytes(b) for b in proxy.conns[0])

    # frame_decoder: [frame_max selector, read size] + stream (no protocol header).
    cframes, sframes = split_frames(client), split_frames(server)
    cstream, sstream = frame_bytes(cframes), frame_bytes(sframes)
    write("frame_decoder", "pika_client", bytes([FRAME_MAX_SEL[131072], 0]) + cstream)
    write("frame_decoder", "pika_client_unlimited_13b_reads",
          bytes([FRAME_MAX_SEL[0], 13]) + cstream)
    write("frame_decoder", "pika_server", bytes([FRAME_MAX_SEL[131072], 0]) + sstream)
    for name, (fmax, stream) in amqp_raw_streams().items():
        write("frame_decoder", name, bytes([FRAME_MAX_SEL[fmax], 0]) + stream)
        cframes += split_frames(stream)

    # method_decode: the longest payload of each method seen, client and server side.
    longest = {}
    for ty, _, payload in cframes + sframes:
        if ty == raw.FRAME_METHOD and len(payload) >= 4:
            cm = struct.unpack_from(">HH", payload)
            if len(payload) > len(longest.get(cm, b"")):
                longest[cm] = payload
    for cm, payload in sorted(longest.items()):
        write("method_decode", METHODS.get(cm, "%d_%d" % cm), payload)

    # field_table: tables from start/start-ok/declares and raw content-header properties.
    props = set()
    for ty, _, payload in cframes + sframes:
        if ty == raw.FRAME_HEADER and len(payload) > 14:
            props.add(payload[12:])
        elif ty == raw.FRAME_METHOD:
            cm = struct.unpack_from(">HH", payload)
            args = payload[4:]
            if cm == (10, 10):
                write("field_table", "server_properties", args[2:])
            elif cm == (10, 11):
                write("field_table", "client_properties", args)
            elif cm == (50, 10):
                at = 2 + 1 + args[2] + 1
                if len(args) > at + 4:
                    write("field_table", "queue_arguments_%s" % args[3:3 + args[2]].decode(),
                          args[at:])
    # Content-header properties (flags first), the longest few distinct ones.
    for i, p in enumerate(sorted(props, key=len, reverse=True)[:6]):
        write("field_table", "properties_%d" % i, p)
    write("field_table", "headers_table", raw.table(HEADERS))
    write("field_table", "array", raw.field_value([1, [2, [3, {"x": [4]}]]])[1:])

    # sasl: [mechanism selector: 0 PLAIN, 1 AMQPLAIN, 2 other] + response.
    for ty, _, payload in cframes:
        if ty == raw.FRAME_METHOD and payload[:4] == b"\x00\x0a\x00\x0b":
            args = payload[4:]
            pos = 4 + struct.unpack_from(">I", args)[0]
            mech = args[pos + 1:pos + 1 + args[pos]]
            pos += 1 + args[pos]
            (rlen,) = struct.unpack_from(">I", args, pos)
            response = args[pos + 4:pos + 4 + rlen]
            sel = {b"PLAIN": 0, b"AMQPLAIN": 1}.get(mech, 2)
            write("sasl", "%s_from_start_ok" % mech.decode().lower(), bytes([sel]) + response)
    write("sasl", "plain_authzid", b"\x00" + b"admin\x00guest\x00guest")
    write("sasl", "amqplain_shortstr", b"\x01" + raw.shortstr("LOGIN") + b"S"
          + raw.longstr("guest") + raw.shortstr("PASSWORD") + b"S" + raw.longstr("pw"))
    write("sasl", "external", b"\x02" + b"\x00guest\x00guest")

    # log_recovery and definitions: what the broker left on disk.
    vhost = os.path.join(data_dir, "vhosts", "2f")
    segs = sorted(f for f in os.listdir(os.path.join(vhost, "msgs")) if f.endswith(".seg"))
    assert segs, "no message log segment written"
    for i, name in enumerate(segs):
        with open(os.path.join(vhost, "msgs", name), "rb") as f:
            seg = f.read()
        # raw form: byte 0 (bit 0 clear; bits 1-2: segment size 256 / 4096 / 64 KiB / 64 MiB)
        write("log_recovery", "raw_segment_%d" % i, bytes([0 << 1]) + seg)
        write("log_recovery", "raw_segment_%d_seg4k" % i, bytes([1 << 1]) + seg)
        recs = records(seg)
        write("log_recovery", "framed_segment_%d" % i, framed(3 << 1, [[p for p, _ in recs]]))
        write("log_recovery", "framed_two_segments_%d" % i,
              framed(0, split_into_two_segments(recs)))
        write("log_recovery", "raw_segment_%d_torn" % i, bytes([0]) + seg[:-5])
    with open(os.path.join(vhost, "definitions.json"), "rb") as f:
        write("definitions", "broker_definitions.json", f.read())
    write("definitions", "empty_object", b"{}")
    write("definitions", "empty_lists", b'{"exchanges": [], "queues": [], "bindings": []}')


if __name__ == "__main__":
    main()
