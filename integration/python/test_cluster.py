"""A three-node cluster of release binaries on loopback (scripts/cluster's launcher): the
metadata leader killed with kill -9, a new one elected within seconds, changes committed by
the two left, and the killed node, restarted on its data directory, catching up."""
import http.client
import importlib.machinery
import importlib.util
import os
import time

import pika
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_loader = importlib.machinery.SourceFileLoader("warren_cluster", os.path.join(ROOT, "scripts", "cluster"))
_spec = importlib.util.spec_from_loader("warren_cluster", _loader)
cluster = importlib.util.module_from_spec(_spec)
_loader.exec_module(cluster)
BINARY = os.environ.get("WARREN_BIN", os.path.join(ROOT, "target", "release", "warren"))


@pytest.fixture
def nodes(tmp_path):
    nodes = cluster.nodes_for(BINARY, str(tmp_path), 3)
    try:
        for n in nodes:
            n.start()
        cluster.wait_all_running(nodes)
        yield nodes
    finally:
        for n in nodes:
            n.kill(cluster.signal.SIGTERM)


def leader_of(node):
    status, members = node.http("GET", "/api/nodes")
    assert status == 200
    leaders = [m["name"] for m in members if m["metadata_leader"]]
    return leaders[0] if leaders else None


def wait_status(node, path, want, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        status, body = node.http("GET", path)
        if status == want:
            return body
        assert time.monotonic() < deadline, f"{node.name}: GET {path} -> {status}, want {want}"
        time.sleep(0.05)


def test_kill_9_of_the_metadata_leader(nodes):
    by_name = {n.name: n for n in nodes}
    leader = by_name[leader_of(nodes[0])]
    others = [n for n in nodes if n is not leader]
    assert others[0].http("PUT", "/api/vhosts/v1", {})[0] == 201
    assert others[1].http("PUT", "/api/exchanges/v1/x1", {"type": "topic", "durable": True})[0] == 201
    for n in nodes:
        wait_status(n, "/api/exchanges/v1/x1", 200)

    leader.kill()
    lost = time.monotonic()
    deadline = lost + 15
    while True:
        new = [leader_of(n) for n in others]
        if new[0] is not None and new[0] == new[1] and new[0] != leader.name:
            break
        assert time.monotonic() < deadline, f"no new leader: {new}"
        time.sleep(0.05)
    took = time.monotonic() - lost
    print(f"new leader {took:.2f} s after kill -9 of the leader")
    assert took < 10, f"new leader after {took:.1f} s"
    # The two left commit changes; the killed node is listed as not running.
    assert others[0].http("PUT", "/api/exchanges/v1/x2", {"type": "fanout", "durable": True})[0] == 201
    assert others[1].http("DELETE", "/api/exchanges/v1/x1")[0] == 204
    deadline = time.monotonic() + 15
    while [m["running"] for m in others[0].http("GET", "/api/nodes")[1] if m["name"] == leader.name] != [False]:
        assert time.monotonic() < deadline, "the killed node is still listed as running"
        time.sleep(0.1)

    # Restarted on its data directory, it catches up.
    leader.start()
    wait_status(leader, "/api/exchanges/v1/x2", 200)
    wait_status(leader, "/api/exchanges/v1/x1", 404)
    cluster.wait_all_running(nodes)
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", leader.amqp_port, "v1", pika.PlainCredentials("guest", "guest")))
    try:
        conn.channel().exchange_declare("x2", passive=True)
    finally:
        conn.close()


def test_kill_9_nemesis_loses_no_acknowledged_change(nodes):
    """Writers declare exchanges through every node while a nemesis kills a node (the leader
    every other round) with kill -9 and restarts it; at the end every node has every exchange
    whose declaration was answered 201 (or 204). CLUSTER_ROUNDS rounds (CI: 3)."""
    import random
    import threading
    rounds = int(os.environ.get("CLUSTER_ROUNDS", "3"))
    assert nodes[0].http("PUT", "/api/vhosts/nem", {})[0] == 201
    acked, stop = [], threading.Event()
    lock = threading.Lock()
    statuses = {}

    def writer(w):
        n = 0
        while not stop.is_set():
            node = random.choice(nodes)
            port = node.mgmt_port
            if port is None or node.proc.poll() is not None:
                time.sleep(0.05)
                continue  # down, or restarting
            name = f"w{w}-{n}"
            n += 1
            try:
                status, _ = node.http("PUT", f"/api/exchanges/nem/{name}",
                                      {"type": "fanout", "durable": True}, timeout=12)
            except (OSError, http.client.HTTPException):
                status = "error"  # the node died while answering
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status in (201, 204):  # 204: a retried proposal applied twice
                    acked.append(name)

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(3)]
    for t in threads:
        t.start()
    by_name = {n.name: n for n in nodes}
    killed = []
    for r in range(rounds):
        alive = [n for n in nodes if n.proc.poll() is None]
        leader = leader_of(alive[0])
        victim = by_name[leader] if r % 2 == 0 and leader else random.choice(nodes)
        victim.kill()
        killed.append(victim.name)
        time.sleep(2.5)
        victim.start()
        cluster.wait_all_running(nodes)
        time.sleep(1)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) > rounds, f"too few acknowledged: {len(acked)}"
    for n in nodes:
        deadline = time.monotonic() + 20
        while True:
            status, listed = n.http("GET", "/api/exchanges/nem?columns=name")
            have = {x["name"] for x in listed} if status == 200 else set()
            missing = [a for a in acked if a not in have]
            if not missing:
                break
            assert time.monotonic() < deadline, f"{n.name} lacks {len(missing)} acknowledged: {missing[:5]}"
            time.sleep(0.2)
    print(f"kill -9 nemesis: {rounds} rounds (killed {killed}), answers {statuses}, "
          f"{len(acked)} acknowledged, 0 lost")


def test_kill_9_nemesis_loses_no_confirmed_message(nodes):
    """Jepsen-style queue check on a replicated quorum queue: producers with publisher confirms
    and consumers with manual acks on every node, while a nemesis kills a node with kill -9
    (the queue's leader every other round) and restarts it. At the end, all nodes up, every
    confirmed message was delivered at least once, and a message acked came back only if the
    node its ack went through was killed after the ack (an ack is not confirmed to the
    client). CLUSTER_ROUNDS rounds (CI: 3)."""
    import random
    import threading
    rounds = int(os.environ.get("CLUSTER_ROUNDS", "3"))
    status, _ = nodes[0].http("PUT", "/api/queues/%2F/jq",
                              {"durable": True, "arguments": {"x-queue-type": "quorum"}})
    assert status == 201
    for n in nodes:
        wait_status(n, "/api/queues/%2F/jq", 200)
    lock = threading.Lock()
    confirmed, nacked = set(), [0]
    delivered = {}  # body -> deliveries
    acks = {}  # body -> [(node name, monotonic time)]
    kills = []  # (node name, monotonic time)
    stop, stop_consumers = threading.Event(), threading.Event()

    def connect(node):
        return pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", node.amqp_port, "/", pika.PlainCredentials("guest", "guest"),
            socket_timeout=5, blocked_connection_timeout=15, heartbeat=0))

    def alive():
        return [n for n in nodes if n.proc.poll() is None and n.amqp_port]

    def producer(w):
        n = 0
        while not stop.is_set():
            up = alive()
            if not up:
                time.sleep(0.05)
                continue
            try:
                conn = connect(random.choice(up))
                ch = conn.channel()
                ch.confirm_delivery()
                while not stop.is_set():
                    body = f"p{w}-{n}"
                    n += 1
                    try:
                        ch.basic_publish("", "jq", body.encode(),
                                         pika.BasicProperties(delivery_mode=2))
                        with lock:
                            confirmed.add(body)
                    except pika.exceptions.NackError:
                        with lock:
                            nacked[0] += 1
                conn.close()
            except Exception:
                time.sleep(0.1)  # the node died under us: another one

    def consumer(node):
        while not stop_consumers.is_set():
            if node.proc.poll() is not None or not node.amqp_port:
                time.sleep(0.1)
                continue
            try:
                conn = connect(node)
                ch = conn.channel()
                ch.basic_qos(prefetch_count=20)
                for method, _, body in ch.consume("jq", inactivity_timeout=0.2):
                    if stop_consumers.is_set():
                        break
                    if method is None:
                        continue
                    b = body.decode()
                    with lock:
                        delivered.setdefault(b, []).append(method.redelivered)
                    ch.basic_ack(method.delivery_tag)
                    with lock:
                        acks.setdefault(b, []).append((node.name, time.monotonic()))
                conn.close()
            except Exception:
                time.sleep(0.1)

    threads = [threading.Thread(target=producer, args=(w,), daemon=True) for w in range(3)]
    consumers = [threading.Thread(target=consumer, args=(n,), daemon=True) for n in nodes]
    for t in threads + consumers:
        t.start()
    by_name = {n.name: n for n in nodes}
    for r in range(rounds):
        time.sleep(1.5)
        up = alive()
        leader = up[0].http("GET", "/api/queues/%2F/jq")[1].get("leader") if up else None
        victim = by_name[leader] if r % 2 == 0 and leader in by_name else random.choice(nodes)
        victim.kill()
        with lock:
            kills.append((victim.name, time.monotonic()))
        time.sleep(2.5)
        victim.start()
        cluster.wait_all_running(nodes)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    deadline = time.monotonic() + 60
    while True:
        with lock:
            missing = [b for b in confirmed if b not in delivered]
        if not missing:
            break
        assert time.monotonic() < deadline, f"{len(missing)} confirmed never delivered: {missing[:5]}"
        time.sleep(0.2)
    time.sleep(1)  # late redeliveries, if any
    stop_consumers.set()
    for t in consumers:
        t.join(timeout=30)
    with lock:
        twice = {b: d for b, d in delivered.items() if len(d) > 1}
        bad = []
        for b, d in twice.items():
            first_ack = acks.get(b, [None])[0]
            if first_ack is None:
                continue
            name, at = first_ack
            # Allowed: the node the ack went through was killed after it.
            if not any(k == name and t >= at for k, t in kills):
                bad.append((b, d, first_ack))
    assert len(confirmed) > rounds * 10, f"too few confirmed: {len(confirmed)}"
    assert not bad, f"acked messages came back with no kill after the ack: {bad[:5]}"
    print(f"message nemesis: {rounds} rounds (kills {[k for k, _ in kills]}), "
          f"{len(confirmed)} confirmed, {nacked[0]} nacked, {len(delivered)} delivered "
          f"({len(twice)} more than once, all after a kill), 0 confirmed lost")
