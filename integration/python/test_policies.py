"""Policies and operator policies applied to queues and exchanges, with RabbitMQ 3.10.8's
precedence (recorded there first):

- one policy applies, the highest priority; an operator policy applies beside it, and for
  numeric limits the lower of the two wins;
- against a queue argument, `max-length`, `max-length-bytes`, `message-ttl`, `expires` and
  `delivery-limit` take the lower value; `dead-letter-exchange`, `dead-letter-routing-key` and
  `overflow` take the argument; an exchange's `alternate-exchange` argument beats the policy;
- a policy applies at once to existing queues and stops applying when deleted.

Differential: `WARREN_EXTERNAL=1 WARREN_PORT=5680 WARREN_MGMT_PORT=15672 pytest
test_policies.py` runs the same against a RabbitMQ node with the management plugin.
"""
import base64
import json
import os
import time
import urllib.error
import urllib.request
import uuid

import pika
import pytest

from conftest import Broker

CONFIG = """
[management]
enabled = true
bind = "127.0.0.1"
port = 0
"""


@pytest.fixture(scope="module")
def node():
    if os.environ.get("WARREN_EXTERNAL") == "1":
        yield int(os.environ["WARREN_PORT"]), int(os.environ.get("WARREN_MGMT_PORT", "15672"))
        return
    b = Broker(config=CONFIG)
    yield b.port, b.mgmt_port
    b.stop()


def call(port, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", data=data, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, (json.loads(text) if text else None)


class Env:
    def __init__(self, amqp, http):
        self.http = http
        self.vhost = "pol-" + uuid.uuid4().hex[:8]
        self.v = urllib.request.quote(self.vhost, safe="")
        assert call(http, "PUT", f"/vhosts/{self.v}", {})[0] in (201, 204)
        call(http, "PUT", f"/permissions/{self.v}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
        self.conn = pika.BlockingConnection(pika.ConnectionParameters(port=amqp, virtual_host=self.vhost))
        self.ch = self.conn.channel()

    def policy(self, name, pattern, definition, priority=0, apply_to="queues", operator=False):
        kind = "operator-policies" if operator else "policies"
        status, body = call(self.http, "PUT", f"/{kind}/{self.v}/{name}",
                            {"pattern": pattern, "definition": definition, "priority": priority,
                             "apply-to": apply_to})
        assert status in (201, 204), body

    def delete_policy(self, name, operator=False):
        kind = "operator-policies" if operator else "policies"
        assert call(self.http, "DELETE", f"/{kind}/{self.v}/{name}")[0] == 204

    def queue(self, name):
        return call(self.http, "GET", f"/queues/{self.v}/{name}")[1]

    def depth_after(self, queue, n, want):
        """Publish n messages to `queue`; how many it holds once it holds `want` (or after 5 s:
        RabbitMQ's publishes reach the queue through a delegate, so a passive declare may
        count before them)."""
        for i in range(n):
            self.ch.basic_publish("", queue, str(i).encode())
        depth = lambda: self.ch.queue_declare(queue, passive=True).method.message_count
        until(lambda: depth() == want)
        time.sleep(0.05)
        return depth()

    def close(self):
        self.conn.close()
        call(self.http, "DELETE", f"/vhosts/{self.v}")


@pytest.fixture
def env(node):
    e = Env(*node)
    yield e
    e.close()


def until(check, timeout=5.0):
    """Policies apply asynchronously in RabbitMQ: poll until `check()` holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_policy_applies_to_existing_queue_and_shows_on_it(env):
    env.ch.queue_declare("orders")
    env.policy("cap", "^orders$", {"max-length": 5})
    assert until(lambda: env.queue("orders").get("policy") == "cap")
    q = env.queue("orders")
    assert q["effective_policy_definition"] == {"max-length": 5}
    assert env.depth_after("orders", 10, 5) == 5
    env.delete_policy("cap")
    assert until(lambda: env.queue("orders").get("policy") is None)
    assert env.depth_after("orders", 3, 8) == 8


def test_highest_priority_wins(env):
    env.policy("low", "^prio", {"max-length": 2}, priority=1)
    env.policy("high", "^prio", {"max-length": 7}, priority=10)
    env.ch.queue_declare("prio-q")
    assert until(lambda: env.queue("prio-q").get("policy") == "high")
    assert env.depth_after("prio-q", 10, 7) == 7


@pytest.mark.parametrize("arg,policy,want", [(3, 5, 3), (8, 5, 5)])
def test_max_length_argument_and_policy_take_the_lower(env, arg, policy, want):
    env.policy("cap", "^ml$", {"max-length": policy})
    env.ch.queue_declare("ml", arguments={"x-max-length": arg})
    assert until(lambda: env.queue("ml").get("policy") == "cap")
    assert env.depth_after("ml", 10, want) == want


def test_operator_policy_lowers_the_policy(env):
    env.policy("cap", "^opq$", {"max-length": 5})
    env.policy("op-cap", "^opq$", {"max-length": 2}, operator=True)
    env.ch.queue_declare("opq")
    assert until(lambda: env.queue("opq").get("operator_policy") == "op-cap")
    q = env.queue("opq")
    assert q["policy"] == "cap"
    assert q["effective_policy_definition"] == {"max-length": 2}
    assert env.depth_after("opq", 10, 2) == 2


def test_message_ttl_from_policy(env):
    env.policy("ttl", "^ttl$", {"message-ttl": 50})
    env.ch.queue_declare("ttl")
    assert until(lambda: env.queue("ttl").get("policy") == "ttl")
    env.ch.basic_publish("", "ttl", b"x")
    assert until(lambda: env.ch.queue_declare("ttl", passive=True).method.message_count == 0)


def test_dead_letter_exchange_argument_beats_policy(env):
    for x in ("dlx-arg", "dlx-pol"):
        env.ch.exchange_declare(x, "fanout")
        env.ch.queue_declare(x + "-q")
        env.ch.queue_bind(x + "-q", x)
    env.policy("dl", "^work", {"dead-letter-exchange": "dlx-pol"})
    env.ch.queue_declare("work-arg", arguments={"x-dead-letter-exchange": "dlx-arg"})
    env.ch.queue_declare("work-pol")
    assert until(lambda: env.queue("work-pol").get("policy") == "dl")
    for q in ("work-arg", "work-pol"):
        env.ch.basic_publish("", q, b"bad")
        method, _, _ = env.ch.basic_get(q)
        env.ch.basic_reject(method.delivery_tag, requeue=False)
    assert until(lambda: env.ch.queue_declare("dlx-arg-q", passive=True).method.message_count == 1)
    assert until(lambda: env.ch.queue_declare("dlx-pol-q", passive=True).method.message_count == 1)


def test_alternate_exchange_policy_on_exchanges(env):
    env.ch.exchange_declare("unrouted", "fanout")
    env.ch.queue_declare("unrouted-q")
    env.ch.queue_bind("unrouted-q", "unrouted")
    env.ch.exchange_declare("events", "direct")
    env.policy("ae", "^events$", {"alternate-exchange": "unrouted"}, apply_to="exchanges")
    assert until(lambda: call(env.http, "GET", f"/exchanges/{env.v}/events")[1].get("policy") == "ae")
    env.ch.basic_publish("events", "nowhere", b"x")
    assert until(lambda: env.ch.queue_declare("unrouted-q", passive=True).method.message_count == 1)


def test_policy_on_a_queue_declared_later(env):
    env.policy("later", "^late\\.", {"max-length": 1, "overflow": "reject-publish"})
    env.ch.queue_declare("late.q")
    assert until(lambda: env.queue("late.q").get("policy") == "later")
    assert env.depth_after("late.q", 4, 1) == 1
