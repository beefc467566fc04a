"""Users, permissions, topic permissions and limits, set through the management HTTP API and
enforced on AMQP, with the reply codes and texts recorded from RabbitMQ 3.10.8.

Differential: the same module runs against RabbitMQ (`WARREN_EXTERNAL=1 WARREN_PORT=5680
WARREN_MGMT_PORT=15672 pytest test_security.py` with a node from ../shared/tools/rmq-node and
the management plugin); every expected text below was first observed there.
"""
import base64
import json
import os
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


class Api:
    def __init__(self, port, user="guest", password="guest"):
        self.base = f"http://127.0.0.1:{port}/api"
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", self.auth)
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read()
                return r.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            text = e.read()
            return e.code, (json.loads(text) if text else None)

    def put(self, path, body):
        return self.call("PUT", path, body)

    def get(self, path):
        return self.call("GET", path)

    def delete(self, path):
        return self.call("DELETE", path)


def q(name):
    return urllib.request.quote(name, safe="")


@pytest.fixture(scope="module")
def setup(node):
    """User u: configure ^(c|amq\\.gen.*)$, write ^(w|c|amq\\.topic)$, read ^(r|c|amq\\.topic)$ in a
    fresh vhost, and topic permissions on amq.topic; guest declares the objects it needs."""
    amqp, http = node
    api = Api(http)
    vhost = "sec-" + uuid.uuid4().hex[:8]
    user = "u-" + uuid.uuid4().hex[:8]
    assert api.put(f"/vhosts/{q(vhost)}", {})[0] == 201
    assert api.put(f"/users/{user}", {"password": "pw", "tags": ""})[0] == 201
    # The user who created the vhost over HTTP was given full permissions in it (RabbitMQ).
    assert api.get(f"/permissions/{q(vhost)}/guest") == (200, {
        "user": "guest", "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"})
    assert api.put(f"/permissions/{q(vhost)}/{user}", {
        "configure": "^(c|amq\\.gen.*)$", "write": "^(w|c|amq\\.topic)$",
        "read": "^(r|c|amq\\.topic)$"})[0] == 201
    assert api.put(f"/topic-permissions/{q(vhost)}/{user}", {
        "exchange": "amq.topic", "write": "^w\\.{username}", "read": "^r\\.{vhost}"})[0] == 201
    g = pika.BlockingConnection(params(amqp, vhost, "guest", "guest"))
    ch = g.channel()
    for name in ["c", "r", "w", "x"]:
        ch.queue_declare(name)
    ch.exchange_declare("xe", "direct")
    ch.exchange_declare("w", "direct")
    ch.exchange_declare("r", "topic")
    g.close()
    yield amqp, api, vhost, user
    api.delete(f"/vhosts/{q(vhost)}")
    api.delete(f"/users/{user}")


def params(port, vhost, user, password):
    return pika.ConnectionParameters("127.0.0.1", port, vhost,
                                     pika.PlainCredentials(user, password),
                                     connection_attempts=1)


def attempt(setup, op):
    """Run op(channel) as the restricted user; return None or (code, text) of the refusal."""
    amqp, _, vhost, user = setup
    conn = pika.BlockingConnection(params(amqp, vhost, user, "pw"))
    ch = conn.channel()
    try:
        op(ch)
        return None
    except pika.exceptions.ChannelClosedByBroker as e:
        return e.reply_code, e.reply_text
    finally:
        if conn.is_open:
            conn.close()


def publish(exchange, rk):
    def op(ch):
        ch.confirm_delivery()
        ch.basic_publish(exchange, rk, b"x")
        ch.queue_declare("c", passive=True)  # a round trip: a refusal arrives before it
    return op


def refused(kind, name, setup):
    return (403, f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '{setup[2]}' "
                 f"refused for user '{setup[3]}'")


def refused_topic(rk, setup):
    return (403, f"ACCESS_REFUSED - access to topic '{rk}' in exchange 'amq.topic' in vhost "
                 f"'{setup[2]}' refused for user '{setup[3]}'")


def test_configure_is_checked_on_declare_and_delete(setup):
    assert attempt(setup, lambda ch: ch.queue_declare("x")) == refused("queue", "x", setup)
    assert attempt(setup, lambda ch: ch.queue_declare("x", passive=True)) is None
    assert attempt(setup, lambda ch: ch.queue_declare("c")) is None
    assert attempt(setup, lambda ch: ch.queue_declare("")) is None  # amq.gen-... is allowed
    assert attempt(setup, lambda ch: ch.exchange_declare("xe", "direct")) == \
        refused("exchange", "xe", setup)
    assert attempt(setup, lambda ch: ch.exchange_declare("xe", "direct", passive=True)) is None
    assert attempt(setup, lambda ch: ch.queue_delete("x")) == refused("queue", "x", setup)
    assert attempt(setup, lambda ch: ch.exchange_delete("xe")) == refused("exchange", "xe", setup)


def test_dead_letter_and_alternate_exchanges_need_write(setup):
    amqp, api, vhost, user = setup
    assert attempt(setup, lambda ch: ch.queue_declare(
        "c2", arguments={"x-dead-letter-exchange": "w"})) == refused("queue", "c2", setup)
    # Created fresh: read on the queue, write on the dead-letter exchange.
    assert attempt(setup, lambda ch: ch.queue_delete("c")) is None
    assert attempt(setup, lambda ch: ch.queue_declare(
        "c", arguments={"x-dead-letter-exchange": "xe"})) == refused("exchange", "xe", setup)
    assert attempt(setup, lambda ch: ch.queue_declare(
        "c", arguments={"x-dead-letter-exchange": "w"})) is None
    assert attempt(setup, lambda ch: ch.queue_delete("c")) is None
    assert attempt(setup, lambda ch: ch.queue_declare("c")) is None
    assert attempt(setup, lambda ch: ch.exchange_declare(
        "c", "direct", arguments={"alternate-exchange": "xe"})) == refused("exchange", "xe", setup)
    assert attempt(setup, lambda ch: ch.exchange_declare(
        "c", "direct", arguments={"alternate-exchange": "w"})) is None


def test_read_is_checked_on_purge_get_consume(setup):
    assert attempt(setup, lambda ch: ch.queue_purge("x")) == refused("queue", "x", setup)
    assert attempt(setup, lambda ch: ch.queue_purge("r")) is None
    assert attempt(setup, lambda ch: ch.basic_get("x")) == refused("queue", "x", setup)
    assert attempt(setup, lambda ch: ch.basic_consume("x", lambda *a: None)) == \
        refused("queue", "x", setup)


def test_bindings_need_write_on_destination_and_read_on_source(setup):
    assert attempt(setup, lambda ch: ch.queue_bind("x", "r", "k")) == refused("queue", "x", setup)
    assert attempt(setup, lambda ch: ch.queue_bind("w", "xe", "k")) == \
        refused("exchange", "xe", setup)
    assert attempt(setup, lambda ch: ch.queue_bind("w", "r", "k")) is None
    assert attempt(setup, lambda ch: ch.queue_bind("w", "missing", "k")) == \
        refused("exchange", "missing", setup)
    assert attempt(setup, lambda ch: ch.queue_unbind("x", "r", "k")) == \
        refused("queue", "x", setup)
    assert attempt(setup, lambda ch: ch.exchange_bind("w", "xe", "k")) == \
        refused("exchange", "xe", setup)
    assert attempt(setup, lambda ch: ch.exchange_bind("w", "r", "k")) is None
    assert attempt(setup, lambda ch: ch.exchange_bind("xe", "r", "k")) == \
        refused("exchange", "xe", setup)


def test_publish_needs_write_on_the_exchange(setup):
    assert attempt(setup, publish("", "x")) == refused("exchange", "amq.default", setup)
    assert attempt(setup, publish("xe", "k")) == refused("exchange", "xe", setup)
    assert attempt(setup, publish("w", "k")) is None
    # Checked before the exchange is looked up: no 404 for a missing one.
    assert attempt(setup, publish("missing", "k")) == refused("exchange", "missing", setup)
    assert attempt(setup, publish("amq.direct", "k")) == refused("exchange", "amq.direct", setup)


def test_topic_permissions_on_routing_keys(setup):
    user, vhost = setup[3], setup[2]
    assert attempt(setup, publish("amq.topic", f"w.{user}.x")) is None
    assert attempt(setup, publish("amq.topic", "w.x")) == refused_topic("w.x", setup)
    assert attempt(setup, lambda ch: ch.queue_bind("w", "amq.topic", f"r.{vhost}")) is None
    assert attempt(setup, lambda ch: ch.queue_bind("w", "amq.topic", "r.x")) == \
        refused_topic("r.x", setup)
    assert attempt(setup, lambda ch: ch.queue_unbind("w", "amq.topic", "r.x")) == \
        refused_topic("r.x", setup)
    assert attempt(setup, lambda ch: ch.exchange_bind("w", "amq.topic", "r.x")) == \
        refused_topic("r.x", setup)


def test_no_permission_in_vhost_is_530(setup):
    amqp, api, vhost, _ = setup
    name = "nop-" + uuid.uuid4().hex[:6]
    assert api.put(f"/users/{name}", {"password": "pw", "tags": ""})[0] == 201
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(params(amqp, vhost, name, "pw"))
    assert f"NOT_ALLOWED - access to vhost '{vhost}' refused for user '{name}'" in str(e.value)
    api.delete(f"/users/{name}")


def test_changes_apply_to_new_channels_at_once(setup):
    amqp, api, vhost, user = setup
    conn = pika.BlockingConnection(params(amqp, vhost, user, "pw"))
    assert api.put(f"/permissions/{q(vhost)}/{user}",
                   {"configure": ".*", "write": ".*", "read": ".*"})[0] == 204
    try:
        conn.channel().queue_declare("now-allowed")
        conn.channel().queue_delete("now-allowed")
    finally:
        conn.close()
        api.put(f"/permissions/{q(vhost)}/{user}", {
            "configure": "^(c|amq\\.gen.*)$", "write": "^(w|c|amq\\.topic)$",
            "read": "^(r|c|amq\\.topic)$"})


def test_vhost_limits(node):
    amqp, http = node
    api = Api(http)
    vhost = "lim-" + uuid.uuid4().hex[:6]
    assert api.put(f"/vhosts/{vhost}", {})[0] == 201
    assert api.put(f"/vhost-limits/{vhost}/max-connections", {"value": 1})[0] == 204
    assert api.put(f"/vhost-limits/{vhost}/max-queues", {"value": 1})[0] == 204
    status, body = api.put(f"/vhost-limits/{vhost}/max-queues", {"value": "x"})
    assert (status, body["reason"]) == (
        400, 'Validation failed\n\nmax-queues should be a number, actually was <<"x">>\n')
    status, body = api.put(f"/vhost-limits/{vhost}/bogus", {"value": 5})
    assert (status, body["reason"]) == (
        400, 'Validation failed\n\nUnrecognised terms [{<<"bogus">>,5}] in limits\n')
    assert api.get(f"/vhost-limits/{vhost}") == \
        (200, [{"vhost": vhost, "value": {"max-connections": 1, "max-queues": 1}}])
    a = pika.BlockingConnection(params(amqp, vhost, "guest", "guest"))
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(params(amqp, vhost, "guest", "guest"))
    assert (f"NOT_ALLOWED - access to vhost '{vhost}' refused for user 'guest': "
            f"connection limit (1) is reached") in str(e.value)
    ch = a.channel()
    ch.queue_declare("q1")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("q2")
    assert (e.value.reply_code, e.value.reply_text) == (
        406, f"PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in vhost "
             f"'{vhost}' (1) is reached")
    a.channel().queue_declare("q1")  # redeclaring an existing queue is not limited
    a.close()
    assert api.delete(f"/vhost-limits/{vhost}/max-queues")[0] == 204
    assert api.delete(f"/vhosts/{vhost}")[0] == 204


def test_user_limits(node):
    amqp, http = node
    api = Api(http)
    name = "ul-" + uuid.uuid4().hex[:6]
    assert api.put(f"/users/{name}", {"password": "pw", "tags": ""})[0] == 201
    assert api.put(f"/permissions/%2F/{name}",
                   {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    assert api.put(f"/user-limits/{name}/max-connections", {"value": 1})[0] == 204
    assert api.put(f"/user-limits/{name}/max-channels", {"value": 2})[0] == 204
    b = pika.BlockingConnection(params(amqp, "/", name, "pw"))
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(params(amqp, "/", name, "pw"))
    assert (f"NOT_ALLOWED - connection refused for user '{name}': user connection limit (1) "
            f"is reached") in str(e.value)
    b.channel()
    b.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        b.channel()
    assert (e.value.reply_code, e.value.reply_text) == (
        530, f"NOT_ALLOWED - number of channels opened for user '{name}' has reached the "
             f"maximum allowed user limit of (2)")
    api.delete(f"/users/{name}")


def test_deleting_a_user_or_vhost_closes_its_connections(node):
    amqp, http = node
    api = Api(http)
    vhost = "del-" + uuid.uuid4().hex[:6]
    name = "del-" + uuid.uuid4().hex[:6]
    assert api.put(f"/vhosts/{vhost}", {})[0] == 201
    assert api.put(f"/users/{name}", {"password": "pw", "tags": ""})[0] == 201
    for v in ["%2F", vhost]:
        assert api.put(f"/permissions/{v}/{name}",
                       {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    in_vhost = pika.BlockingConnection(params(amqp, vhost, name, "pw"))
    in_vhost.channel().queue_declare("doomed")
    assert api.delete(f"/vhosts/{vhost}")[0] == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        in_vhost.process_data_events(time_limit=5)
        in_vhost.channel()
    assert (e.value.reply_code, e.value.reply_text) == (
        320, f"CONNECTION_FORCED - vhost '{vhost}' is deleted")
    assert api.get(f"/vhosts/{vhost}")[0] == 404
    c = pika.BlockingConnection(params(amqp, "/", name, "pw"))
    assert api.delete(f"/users/{name}")[0] == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        c.process_data_events(time_limit=5)
        c.channel()
    assert (e.value.reply_code, e.value.reply_text) == (
        320, f"CONNECTION_FORCED - user '{name}' is deleted")
    assert api.delete(f"/users/{name}")[0] == 404


def test_management_tags(node):
    _, http = node
    admin = Api(http)
    names = {t: f"{t}-" + uuid.uuid4().hex[:6] for t in ["none", "management", "monitoring"]}
    for tag, name in names.items():
        assert admin.put(f"/users/{name}",
                         {"password": "pw", "tags": "" if tag == "none" else tag})[0] == 201
    status, body = Api(http, names["none"], "pw").get("/overview")
    assert (status, body) == (401, {"error": "not_authorised", "reason": "Not management user"})
    status, body = Api(http, names["management"], "pw").get("/users")
    assert (status, body) == (401, {"error": "not_authorised", "reason": "Not administrator user"})
    # A management user sees only the vhosts it has permissions in; a monitoring user all.
    assert Api(http, names["management"], "pw").get("/vhosts") == (200, [])
    status, vhosts = Api(http, names["monitoring"], "pw").get("/vhosts")
    assert status == 200 and "/" in [v["name"] for v in vhosts]
    # Any management user may read the user limits (3.10.8, observed).
    assert Api(http, names["management"], "pw").get("/user-limits")[0] == 200
    assert Api(http, names["management"], "pw").get("/whoami") == \
        (200, {"name": names["management"], "tags": ["management"]})
    status, body = Api(http, "guest", "wrong").get("/overview")
    assert (status, body) == (401, {"error": "not_authorized", "reason": "Login failed"})
    for name in names.values():
        admin.delete(f"/users/{name}")


def test_users_and_permissions_api(node):
    _, http = node
    api = Api(http)
    name = "api-" + uuid.uuid4().hex[:6]
    assert api.put(f"/users/{name}", {"password": "secret"})[0] == 400  # tags_not_present
    assert api.put(f"/users/{name}", {"password": "secret", "tags": "management,foo"})[0] == 201
    assert api.put(f"/users/{name}", {"password": "secret2", "tags": "management"})[0] == 204
    status, u = api.get(f"/users/{name}")
    assert status == 200 and u["tags"] == ["management"]
    assert u["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    salted = base64.b64decode(u["password_hash"])
    import hashlib
    assert hashlib.sha256(salted[:4] + b"secret2").digest() == salted[4:]
    assert Api(http, name, "secret2").get("/whoami")[0] == 200
    status, body = api.put(f"/permissions/nope/{name}",
                           {"configure": ".*", "write": ".*", "read": ".*"})
    assert (status, body) == (400, {"error": "bad_request", "reason": "vhost_or_user_not_found"})
    status, _ = api.put(f"/permissions/%2F/{name}", {"configure": ".*", "write": ".*", "read": "("})
    assert status == 400
    assert api.put(f"/permissions/%2F/{name}",
                   {"configure": "^a", "write": ".*", "read": ".*"})[0] == 201
    assert api.get(f"/permissions/%2F/{name}") == (200, {
        "user": name, "vhost": "/", "configure": "^a", "write": ".*", "read": ".*"})
    assert api.delete(f"/permissions/%2F/{name}")[0] == 204
    assert api.get(f"/permissions/%2F/{name}")[0] == 404
    assert api.delete(f"/users/{name}")[0] == 204


def test_impersonator_may_set_any_user_id(node):
    amqp, http = node
    api = Api(http)
    names = {t: f"{t}-" + uuid.uuid4().hex[:6] for t in ["impersonator", "plain"]}
    for tag, name in names.items():
        assert api.put(f"/users/{name}",
                       {"password": "pw", "tags": "impersonator" if tag == "impersonator" else ""})[0] == 201
        assert api.put(f"/permissions/%2F/{name}",
                       {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    for tag, name in names.items():
        conn = pika.BlockingConnection(params(amqp, "/", name, "pw"))
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="someone-else"))
        if tag == "impersonator":
            ch.queue_declare(q, passive=True)
            conn.close()
        else:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                ch.queue_declare(q, passive=True)
            assert (e.value.reply_code, e.value.reply_text) == (
                406, f"PRECONDITION_FAILED - user_id property set to 'someone-else' but "
                     f"authenticated user was '{name}'")
            conn.close()
    for name in names.values():
        api.delete(f"/users/{name}")
