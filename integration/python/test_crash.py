"""kill -9 the release binary under load, restart it, drain.

1. Confirmed publishing only: every confirmed message is there exactly once, in order.
2. Confirmed publishing of 1 KiB messages, a consumer acking as it goes, and a 64 KiB queue
   memory budget (so messages are paged out to the log and read back): every confirmed message
   is either acked before the crash or there after it, none twice. Acked messages that come back
   (the at-least-once window) and delivered ones that come back without the redelivered flag
   are counted and printed (`-s`); docs/storage.md quotes them.

3. Confirmed publishing while a no-ack consumer takes everything (most records are then never
   written: left out of the log as holes), then confirmed publishing with no consumer, and the
   kill during that: exactly the messages of the second phase come back, in order, none of the
   first (small segments, so the holes span and retire several of them).

CRASH_ROUNDS (default 3) sets the number of rounds of each; by hand: CRASH_ROUNDS=200.
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


def start(data_dir, config=None):
    extra = ["--config", config] if config else []
    proc = subprocess.Popen(
        [BIN, "--bind", "127.0.0.1", "--port", "0", "--data-dir", data_dir,
         "--log-level", "warn,warren=info"] + extra,
        stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 20
    for line in proc.stderr:
        m = LISTENING.search(line)
        if m:
            log = os.environ.get("WARREN_CRASH_LOG")
            if log:
                f = open(log, "a")
                threading.Thread(target=lambda: [f.write(line) or f.flush() for line in proc.stderr],
                                 daemon=True).start()
            else:
                threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(m.group(1))
        assert time.monotonic() < deadline, "warren did not start"
    raise AssertionError("warren exited: %s" % proc.wait())


def publisher(port, queue, confirmed, stop, size=0, first=0):
    """Publish persistent messages with confirms, numbered from `first`, until the broker dies
    (or `stop`)."""
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, heartbeat=0))
        ch = conn.channel()
        ch.confirm_delivery()
        i = first + len(confirmed)
        while not stop.is_set():
            ch.basic_publish("", queue, str(i).encode().ljust(size, b"."),
                             pika.BasicProperties(delivery_mode=2))  # returns once confirmed
            confirmed.append(i)
            i += 1
    except Exception:
        pass  # the broker was killed


def declare_durable(port, queue):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    conn.channel().queue_declare(queue, durable=True)
    conn.close()


def wait_until(confirmed, want, deadline):
    """Until `confirmed` holds `want` messages or the deadline (monotonic) passes."""
    while len(confirmed) < want and time.monotonic() < deadline:
        time.sleep(0.005)


def drain(port, queue):
    """Every message left in `queue`, taken with basic.get: [(number, redelivered, size)]."""
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    out = []
    while True:
        m, props, body = ch.basic_get(queue, auto_ack=True)
        if m is None:
            break
        out.append((int(body.rstrip(b".")), m.redelivered, len(body)))
    conn.close()
    return out


@pytest.mark.parametrize("round_", range(int(os.environ.get("CRASH_ROUNDS", "3"))))
def test_kill_9_loses_no_confirmed_message(round_):
    rng = random.Random(round_)
    with tempfile.TemporaryDirectory() as data:
        proc, port = start(data)
        queue = "crash-%d" % round_
        declare_durable(port, queue)
        confirmed, stop = [], threading.Event()
        t = threading.Thread(target=publisher, args=(port, queue, confirmed, stop), daemon=True)
        t.start()
        wait_until(confirmed, rng.randint(50, 400), time.monotonic() + 10)
        time.sleep(rng.random() * 0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        t.join(5)
        assert len(confirmed) > 0
        proc, port = start(data)
        try:
            left = drain(port, queue)
            assert not any(redelivered for _, redelivered, _ in left), \
                "never delivered before the crash"
            got = [n for n, _, _ in left]
            assert len(got) == len(set(got)), "duplicates after recovery"
            missing = set(confirmed) - set(got)
            assert not missing, "confirmed but lost: %s" % sorted(missing)[:10]
            assert got == sorted(got), "order kept"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def consumer(port, queue, acked, delivered, stop):
    """Consume with manual acks (prefetch 50); `acked` holds what was acked or about to be
    (an ack may reach the broker), `delivered` everything received."""
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, heartbeat=0))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=50)
        for m, props, body in ch.consume(queue, inactivity_timeout=0.05):
            if stop.is_set():
                break
            if m is None:
                continue
            n = int(body.rstrip(b"."))
            delivered.add(n)
            # Recorded first: the broker may take the ack even if the kill lands before the
            # next statement of this thread.
            acked.add(n)
            ch.basic_ack(m.delivery_tag)
    except Exception:
        pass  # the broker was killed


WINDOWS = {"acked_back": [], "delivered_not_flagged": []}


@pytest.mark.parametrize("round_", range(int(os.environ.get("CRASH_ROUNDS", "3"))))
def test_kill_9_with_a_consumer_and_paging(round_, tmp_path):
    rng = random.Random(1000 + round_)
    config = tmp_path / "broker.toml"
    config.write_text("[storage]\nqueue_memory_bytes = 65536\n")
    data = tmp_path / "data"
    data.mkdir()
    proc, port = start(str(data), str(config))
    queue = "crash-consumed-%d" % round_
    declare_durable(port, queue)
    confirmed, acked, delivered, stop = [], set(), set(), threading.Event()
    pubs = [threading.Thread(target=publisher, args=(port, queue, c, stop, 1024), daemon=True)
            for c in (confirmed,)]
    # The consumer starts late, so a backlog (paged out) builds up first.
    for t in pubs:
        t.start()
    deadline = time.monotonic() + 10
    wait_until(confirmed, 1000, deadline)
    cons = threading.Thread(target=consumer, args=(port, queue, acked, delivered, stop), daemon=True)
    cons.start()
    wait_until(confirmed, len(confirmed) + rng.randint(100, 1500), deadline)
    time.sleep(rng.random() * 0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in pubs + [cons]:
        t.join(5)
    acked, delivered = set(acked), set(delivered)
    proc, port = start(str(data), str(config))
    try:
        left = drain(port, queue)
        assert all(size == 1024 for _, _, size in left)
        got = [n for n, _, _ in left]
        flags = {n: redelivered for n, redelivered, _ in left}
        assert len(got) == len(set(got)), "duplicates after recovery"
        missing = set(confirmed) - set(got) - acked
        assert not missing, "confirmed, not acked, but lost: %s" % sorted(missing)[:10]
        back = sorted(n for n in got if n in acked)
        unflagged = sorted(n for n in got if n in delivered - acked and not flags[n])
        WINDOWS["acked_back"].append(len(back))
        WINDOWS["delivered_not_flagged"].append(len(unflagged))
        print("round %d: %d confirmed, %d acked; after the crash %d left, %d of them acked before "
              "it, %d delivered but not flagged redelivered; max so far %s"
              % (round_, len(confirmed), len(acked), len(got), len(back), len(unflagged),
                 {k: max(v) for k, v in WINDOWS.items()}))
        # The window is what was in flight: acks not yet read by the broker (at most the
        # prefetch) and removals written after the last sync (one batch).
        assert len(back) <= 200, back[:20]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def topology_churn(port, model, inflight, stop, seed):
    """Declare, bind, unbind and delete durable queues at random until the broker dies;
    `model` holds the state each confirmed (-ok) change left, `inflight` the change sent and
    not yet answered."""
    rng = random.Random(seed)
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, heartbeat=0))
        ch = conn.channel()
        while not stop.is_set():
            k = rng.randrange(40)
            q = "topo-%d" % k
            op = rng.choice(["declare", "declare", "bind", "unbind", "delete"])
            inflight[:] = [k]
            if op == "declare":
                ch.queue_declare(q, durable=True)
                model.setdefault(k, set())
            elif op == "bind" and k in model:
                ch.queue_bind(q, "amq.direct", "key-%d" % k)
                model[k].add("key-%d" % k)
            elif op == "unbind" and k in model:
                ch.queue_unbind(q, "amq.direct", "key-%d" % k)
                model[k].discard("key-%d" % k)
            elif op == "delete":
                ch.queue_delete(q)
                model.pop(k, None)
            inflight[:] = []
    except Exception:
        pass  # the broker was killed


@pytest.mark.parametrize("round_", range(int(os.environ.get("CRASH_ROUNDS", "3"))))
def test_kill_9_keeps_every_acknowledged_topology_change(round_):
    """declare-ok, bind-ok, unbind-ok and delete-ok mean durable: after kill -9 each queue and
    binding is as the last answered change left it (the one change in flight may go either
    way)."""
    rng = random.Random(1000 + round_)
    with tempfile.TemporaryDirectory() as data:
        proc, port = start(data)
        model, inflight, stop = {}, [], threading.Event()
        t = threading.Thread(target=topology_churn, args=(port, model, inflight, stop, round_),
                             daemon=True)
        t.start()
        time.sleep(0.2 + rng.random() * 0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        t.join(5)
        assert model, "some changes were answered before the crash"
        proc, port = start(data)
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
            ch = conn.channel()
            ch.confirm_delivery()
            for k in range(40):
                if k in inflight:
                    continue
                q = "topo-%d" % k
                try:
                    ch.queue_declare(q, passive=True)
                    exists = True
                except pika.exceptions.ChannelClosedByBroker as e:
                    assert e.reply_code == 404
                    exists = False
                    ch = conn.channel()
                    ch.confirm_delivery()
                assert exists == (k in model), "queue %s" % q
                if not exists:
                    continue
                try:
                    ch.basic_publish("amq.direct", "key-%d" % k, b"probe", mandatory=True)
                    routed = True
                except pika.exceptions.UnroutableError:
                    routed = False
                assert routed == ("key-%d" % k in model[k]), "binding of %s" % q
            conn.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def tolerant_publisher(port, queue, confirmed, nacked, stop, size):
    """Publish persistent messages with confirms until the broker dies; nacks (a full disk)
    are recorded and publishing goes on."""
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, heartbeat=0))
        ch = conn.channel()
        ch.confirm_delivery()
        i = 0
        while not stop.is_set():
            try:
                ch.basic_publish("", queue, str(i).encode().ljust(size, b"."),
                                 pika.BasicProperties(delivery_mode=2))
                confirmed.append(i)
            except pika.exceptions.NackError:
                nacked.append(i)
                time.sleep(0.002)
            i += 1
    except Exception:
        pass  # the broker was killed


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 12 MiB tmpfs (root only: skipped where mounting is not permitted)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.parametrize("round_", range(int(os.environ.get("CRASH_ROUNDS", "3"))))
def test_kill_9_on_a_disk_that_fills_up(round_, tmp_path, small_tmpfs):
    """Confirmed publishing of 4 KiB messages onto a 12 MiB tmpfs (the disk alarm off) until
    publishes are nacked, then a consumer acking (freeing space), kill -9 at a random moment,
    restart on the same full disk: every confirmed message that was not acked is back, once."""
    rng = random.Random(2000 + round_)
    config = tmp_path / "broker.toml"
    config.write_text("[storage]\nqueue_memory_bytes = 65536\nsegment_bytes = 1048576\n"
                      "[disk]\nfree_limit = 0\n")
    data = small_tmpfs / "data"
    data.mkdir()
    proc, port = start(str(data), str(config))
    queue = "crash-full-%d" % round_
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    conn.channel().queue_declare(queue, durable=True)
    conn.close()
    confirmed, nacked, acked, delivered, stop = [], [], set(), set(), threading.Event()
    pub = threading.Thread(target=tolerant_publisher,
                           args=(port, queue, confirmed, nacked, stop, 4096), daemon=True)
    pub.start()
    deadline = time.monotonic() + 20
    while len(nacked) < 20 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert nacked, "the disk filled up: publishes were nacked"
    cons = threading.Thread(target=consumer, args=(port, queue, acked, delivered, stop), daemon=True)
    cons.start()
    time.sleep(rng.random() * 0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in (pub, cons):
        t.join(5)
    acked = set(acked)
    proc, port = start(str(data), str(config))
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        ch = conn.channel()
        got = []
        while True:
            m, props, body = ch.basic_get(queue, auto_ack=True)
            if m is None:
                break
            assert len(body) == 4096
            got.append(int(body.rstrip(b".")))
        conn.close()
        assert len(got) == len(set(got)), "duplicates after recovery"
        missing = set(confirmed) - set(got) - acked
        assert not missing, "confirmed, not acked, but lost: %s" % sorted(missing)[:10]
        print("round %d: %d confirmed, %d nacked, %d acked; after the crash %d back, %d of them "
              "acked before it" % (round_, len(confirmed), len(nacked), len(acked), len(got),
                                   len([n for n in got if n in acked])))
        # The window: acks the broker had not read or written (the prefetch), as above.
        assert len([n for n in got if n in acked]) <= 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def no_ack_consumer(port, queue, delivered, stop):
    """Consume without acks until `stop`; `delivered` holds every message received."""
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, heartbeat=0))
        ch = conn.channel()
        for m, props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=0.05):
            if m is not None:
                delivered.append(int(body.rstrip(b".")))
            elif stop.is_set():
                break
        conn.close()
    except Exception:
        pass


@pytest.mark.parametrize("round_", range(int(os.environ.get("CRASH_ROUNDS", "3"))))
def test_kill_9_after_no_ack_consumers_left_records_out(round_, tmp_path):
    rng = random.Random(2000 + round_)
    config = tmp_path / "broker.toml"
    config.write_text("[storage]\nsegment_bytes = 65536\n")
    data = tmp_path / "data"
    data.mkdir()
    proc, port = start(str(data), str(config))
    queue = "crash-no-ack-%d" % round_
    declare_durable(port, queue)
    # Phase 1: a no-ack consumer takes every message as it is published.
    first, delivered, stop = [], [], threading.Event()
    cons = threading.Thread(target=no_ack_consumer, args=(port, queue, delivered, stop),
                            daemon=True)
    cons.start()
    pub = threading.Thread(target=publisher, args=(port, queue, first, stop, 1024), daemon=True)
    pub.start()
    deadline = time.monotonic() + 20
    wait_until(first, rng.randint(500, 2000), deadline)
    stop.set()
    pub.join(10)
    cons.join(10)
    assert sorted(delivered) == first, "the no-ack consumer got every confirmed message"
    # Phase 2: no consumer; killed while publishing (numbered from 10**6).
    second, stop2, second_start = [], threading.Event(), 10**6
    pub2 = threading.Thread(target=publisher,
                            args=(port, queue, second, stop2, 1024, second_start), daemon=True)
    pub2.start()
    wait_until(second, rng.randint(100, 1000), deadline + 10)
    time.sleep(rng.random() * 0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop2.set()
    pub2.join(5)
    proc, port = start(str(data), str(config))
    try:
        left = drain(port, queue)
        assert all(size == 1024 for _, _, size in left)
        got = [n for n, _, _ in left]
        assert not [n for n in got if n < second_start], "a message the no-ack consumer took came back"
        assert len(got) == len(set(got)), "duplicates after recovery"
        missing = set(second) - set(got)
        assert not missing, "confirmed but lost: %s" % sorted(missing)[:10]
        assert got == sorted(got), "order kept"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)

