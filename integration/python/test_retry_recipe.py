"""The retry-with-back-off recipe of docs/dead-letters.md, end to end with pika: dead-lettering
and TTLs set by policies (not queue arguments), a retry queue whose TTL is the back-off, the
x-death count deciding when to give up, a parking-lot queue for what never succeeds, and the
shovel replay once the bug is fixed.

Differential: `WARREN_EXTERNAL=1 WARREN_PORT=5680 WARREN_MGMT_PORT=15672 pytest
test_retry_recipe.py` runs it against RabbitMQ (the replay uses a plain shovel).
"""
import time

import pika

from test_policies import Env, call, node, until  # noqa: F401 (node is a fixture)

BACKOFF_MS = 200
MAX_ATTEMPTS = 3


def setup(env):
    ch = env.ch
    ch.exchange_declare("work", "direct", durable=True)
    ch.exchange_declare("work.retry", "fanout", durable=True)
    for q in ("tasks", "tasks.retry", "tasks.parking"):
        ch.queue_declare(q, durable=True)
    ch.queue_bind("tasks", "work", "task")
    ch.queue_bind("tasks.retry", "work.retry")
    # Failures go to the retry queue; after the back-off they come back to `tasks`.
    env.policy("tasks-dlx", "^tasks$", {"dead-letter-exchange": "work.retry"})
    env.policy("retry-backoff", "^tasks\\.retry$",
               {"message-ttl": BACKOFF_MS, "dead-letter-exchange": "work"})
    assert until(lambda: env.queue("tasks.retry").get("policy") == "retry-backoff", 20)
    assert until(lambda: env.queue("tasks").get("policy") == "tasks-dlx", 20)


def attempts(props):
    """How many times the message was rejected from `tasks` (its x-death count there)."""
    for d in (props.headers or {}).get("x-death", []):
        if d["queue"] == "tasks" and d["reason"] == "rejected":
            return d["count"]
    return 0


def work(env, handler, seconds):
    """A consumer running `handler(body) -> bool` on `tasks` with the recipe's rules; returns
    the bodies it processed successfully."""
    done = []
    deadline = time.monotonic() + seconds
    ch = env.ch
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get("tasks")
        if method is None:
            env.conn.process_data_events(0.02)
            continue
        if handler(body):
            done.append(body)
            ch.basic_ack(method.delivery_tag)
        elif attempts(props) + 1 >= MAX_ATTEMPTS:
            # Give up: park it (with its history) for a human, and ack the original.
            ch.basic_publish("", "tasks.parking", body,
                             pika.BasicProperties(headers=props.headers, delivery_mode=2))
            ch.basic_ack(method.delivery_tag)
        else:
            ch.basic_reject(method.delivery_tag, requeue=False)  # to the retry queue
    return done


def test_retry_with_backoff_then_park_then_replay(node):
    env = Env(*node)
    try:
        setup(env)
        ch = env.ch
        ch.basic_publish("work", "task", b"flaky", pika.BasicProperties(delivery_mode=2))
        ch.basic_publish("work", "task", b"poison", pika.BasicProperties(delivery_mode=2))
        failures = {"flaky": 0}

        def handler(body):
            if body == b"flaky":
                failures["flaky"] += 1
                return failures["flaky"] > 1  # fails once, then works
            return False  # the poison one always fails

        started = time.monotonic()
        done = work(env, handler, seconds=(MAX_ATTEMPTS + 2) * BACKOFF_MS / 1000 + 1.5)
        assert done == [b"flaky"]
        assert failures["flaky"] == 2, "one retry after one back-off"
        assert until(lambda: ch.queue_declare("tasks.parking", passive=True).method.message_count == 1)
        assert time.monotonic() - started >= (MAX_ATTEMPTS - 1) * BACKOFF_MS / 1000
        _, parked = call(env.http, "POST", f"/queues/{env.v}/tasks.parking/get",
                         {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
        deaths = parked[0]["properties"]["headers"]["x-death"]
        assert {(d["queue"], d["reason"], d["count"]) for d in deaths} == {
            ("tasks", "rejected", MAX_ATTEMPTS - 1), ("tasks.retry", "expired", MAX_ATTEMPTS - 1)}

        # The bug is fixed: move the parking lot back to work; it is processed once.
        assert call(env.http, "PUT", f"/parameters/shovel/{env.v}/unpark", {"value": {
            "src-uri": f"amqp:///{env.v}", "src-queue": "tasks.parking",
            "dest-uri": f"amqp:///{env.v}", "dest-exchange": "work", "dest-exchange-key": "task",
            "src-delete-after": "queue-length"}})[0] in (201, 204)
        done = work(env, lambda body: True, seconds=2)
        assert done == [b"poison"]
    finally:
        env.close()
