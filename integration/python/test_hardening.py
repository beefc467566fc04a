"""Hostile clients against the release binary: what a client can make the broker hold must stay
bounded, measured as the broker process's RSS, and everyone else keeps being served.

The broker is the session's (conftest.py); each test cleans up its own connections."""
import os
import socket
import sys
import threading
import time

import pika

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import amqp_raw as a  # noqa: E402

HOST = "127.0.0.1"


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def flood_without_reading(port, payload, seconds=20):
    """Send `payload` repeatedly on a raw connection that never reads, until the broker stops
    reading too (a send blocks for 2 s) or `seconds` pass. Returns (socket, bytes sent)."""
    s = a.connect(port, HOST, 3.0)
    a.handshake(s, timeout=3.0)
    a.open_channel(s, 1, timeout=3.0)
    # Small kernel buffers on our side, so the broker's backpressure shows quickly.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.settimeout(2.0)
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            s.sendall(payload)
        except socket.timeout:
            return s, sent, True
        sent += len(payload)
    return s, sent, False


def still_serves(port):
    conn = pika.BlockingConnection(pika.ConnectionParameters(HOST, port, socket_timeout=5))
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"ping")
    got = None
    deadline = time.monotonic() + 5
    while got is None and time.monotonic() < deadline:
        _, _, got = ch.basic_get(q, auto_ack=True)
    conn.close()
    return got == b"ping"


def test_unread_returns_do_not_grow_the_broker(broker, port):
    """Mandatory unroutable publishes whose basic.returns the client never reads: the broker
    stops reading the client once 4 MiB of output wait (it grew by 100 MB before)."""
    before = rss_mb(broker.proc.pid)
    body = b"r" * 1024
    batch = b"".join(a.publish_message(1, body, routing_key="nowhere", mandatory=True)
                     for _ in range(100))
    s, sent, pushed_back = flood_without_reading(port, batch)
    try:
        assert pushed_back, f"the broker kept reading ({sent >> 20} MB)"
        grown = rss_mb(broker.proc.pid) - before
        assert grown < 40, f"broker grew {grown:.0f} MB after {sent >> 20} MB sent"
        assert still_serves(port)
    finally:
        s.close()


def test_unread_get_oks_do_not_grow_the_broker(broker, port):
    """The same with basic.get of 4 KiB messages (241 MB for 50k before)."""
    setup = pika.BlockingConnection(pika.ConnectionParameters(HOST, port))
    ch = setup.channel()
    ch.queue_declare("hardening-get")
    body = b"g" * 4096
    for _ in range(2000):
        ch.basic_publish("", "hardening-get", body)
    before = rss_mb(broker.proc.pid)
    get = a.method_frame(1, 60, 70, a.short(0) + a.shortstr("hardening-get") + a.bits(False))
    # Each get-ok is followed by a requeue of everything (recover), so the queue never empties.
    recover = a.method_frame(1, 60, 110, a.bits(True))
    batch = (get * 50) + recover
    s, sent, pushed_back = flood_without_reading(port, batch)
    try:
        assert pushed_back, f"the broker kept reading ({sent >> 20} MB)"
        grown = rss_mb(broker.proc.pid) - before
        assert grown < 40, f"broker grew {grown:.0f} MB after {sent >> 20} MB sent"
        assert still_serves(port)
    finally:
        s.close()
        ch.queue_delete("hardening-get")
        setup.close()


def test_many_connections_flooding_at_once_stay_bounded(broker, port):
    """Eight such clients at once: the bound is per connection (4 MiB each) plus kernel
    buffers."""
    before = rss_mb(broker.proc.pid)
    body = b"m" * 1024
    batch = b"".join(a.publish_message(1, body, routing_key="nowhere", mandatory=True)
                     for _ in range(100))
    socks = []
    threads = [threading.Thread(target=lambda: socks.append(flood_without_reading(port, batch, 15)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        grown = rss_mb(broker.proc.pid) - before
        assert grown < 100, f"broker grew {grown:.0f} MB"
        assert still_serves(port)
    finally:
        assert all(pushed_back for _, _, pushed_back in socks)
        for s, _, _ in socks:
            s.close()


def test_memory_goes_back_to_the_os_after_a_queue_is_deleted(tmp_path):
    """jemalloc's background purging: a broker that held 50,000 x 1 KiB messages shrinks back
    near its starting RSS within seconds of the queue's deletion (with the system allocator it
    stayed at its peak; docs/benchmarks.md has the figures)."""
    from test_crash import start
    # In memory: with a data dir the queue would page its messages out past 8 MiB.
    config = tmp_path / "broker.toml"
    config.write_text('[storage]\nmode = "memory"\n')
    proc, port = start(str(tmp_path), str(config))
    try:
        baseline = rss_mb(proc.pid)
        conn = pika.BlockingConnection(pika.ConnectionParameters(HOST, port))
        ch = conn.channel()
        ch.queue_declare("big")
        body = b"x" * 1024
        for _ in range(50000):
            ch.basic_publish("", "big", body)
        assert ch.queue_declare("big", passive=True).method.message_count == 50000
        peak = rss_mb(proc.pid)
        assert peak > baseline + 50
        ch.queue_delete("big")
        deadline = time.monotonic() + 40
        while rss_mb(proc.pid) > baseline + 40 and time.monotonic() < deadline:
            time.sleep(0.5)
        final = rss_mb(proc.pid)
        conn.close()
        assert final <= baseline + 40, f"RSS {baseline:.0f} -> {peak:.0f} -> {final:.0f} MB"
    finally:
        proc.terminate()
        proc.wait(10)


def test_small_messages_do_not_hold_the_read_buffers_of_large_ones():
    """Frames are slices of the connection's read buffer. A 16 B message kept in a queue used to
    keep the whole buffer it was read into, with the 64 KiB messages read beside it: 12,000 of
    them held 25.5 MB once the large ones were gone (2.2 KB each). A message now has an
    allocation of its own size: 14 MB (1.2 KB each; what remains is the allocator's
    fragmentation from the large messages' small parts, 0.7 KB with 16 B ones instead)."""
    from conftest import Broker
    b = Broker(args=["--in-memory"])
    try:
        setup = pika.BlockingConnection(pika.ConnectionParameters(HOST, b.port))
        ch = setup.channel()
        ch.queue_declare("pin-large")
        ch.queue_declare("pin-small")
        before = rss_mb(b.proc.pid)
        s = a.connect(b.port, HOST, 5.0)
        a.handshake(s, timeout=5.0)
        a.open_channel(s, 1, timeout=5.0)
        pair = (a.publish_message(1, b"L" * 65536, routing_key="pin-large")
                + a.publish_message(1, b"s" * 16, routing_key="pin-small"))
        n = 12000
        for _ in range(n // 500):
            s.sendall(pair * 500)
        deadline = time.monotonic() + 30
        while ch.queue_declare("pin-small", passive=True).method.message_count < n:
            assert time.monotonic() < deadline, "the small messages did not all arrive"
            time.sleep(0.05)
        ch.queue_delete("pin-large")
        # The large messages' memory goes back to the system within jemalloc's decay time
        # (10 s).
        deadline = time.monotonic() + 40
        while True:
            grown = rss_mb(b.proc.pid) - before
            if grown < 20:
                break
            assert time.monotonic() < deadline, (
                f"{n} queued 16 B messages still hold {grown:.0f} MB "
                f"({grown * 1024 * 1024 / n:.0f} B each)")
            time.sleep(0.25)
        assert ch.queue_declare("pin-small", passive=True).method.message_count == n
        s.close()
        setup.close()
    finally:
        b.stop()
