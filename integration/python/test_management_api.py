"""The management API's replies replayed from RabbitMQ 3.10.8's: every request recorded in
tests/fixtures/rabbitmq-3.10.8-mgmt/ (with the management plugin, see its README.md) is sent
to Warren in the same state, and the status and body must be the ones RabbitMQ gave.

Differential: `WARREN_EXTERNAL=1 WARREN_PORT=5680 WARREN_MGMT_PORT=15672 pytest
test_management_api.py` runs the same checks against a RabbitMQ node (a fresh one: the test
declares q1 and expects it new).
"""
import base64
import json
import os
import time
import urllib.error
import urllib.request

import pika
import pytest

from conftest import Broker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "rabbitmq-3.10.8-mgmt")

CONFIG = """
[management]
enabled = true
bind = "127.0.0.1"
port = 0
stats_interval_ms = 100
"""


def recorded(name):
    with open(os.path.join(FIXTURES, name + ".json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def node():
    if os.environ.get("WARREN_EXTERNAL") == "1":
        yield int(os.environ["WARREN_PORT"]), int(os.environ.get("WARREN_MGMT_PORT", "15672"))
        return
    b = Broker(config=CONFIG)
    yield b.port, b.mgmt_port
    b.stop()


def call(port, method, path, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    if data is not None:
        req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None), dict(r.headers)
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, (json.loads(text) if text else None), dict(e.headers)


def replay(port, name):
    rec = recorded(name)
    r = rec["request"]
    status, body, headers = call(port, r["method"], r["path"], r.get("body"), r.get("headers"))
    assert (status, body) == (rec["status"], rec["body"]), name
    return headers


@pytest.fixture(scope="module")
def state(node):
    """q1: durable, two messages, a consumer holding one of them unacked (prefetch 1)."""
    amqp, http = node
    assert call(http, "PUT", "/api/queues/%2F/q1", {"durable": True, "arguments": {}})[0] in (201, 204)
    conn = pika.BlockingConnection(pika.ConnectionParameters(port=amqp))
    ch = conn.channel()
    for body in (b"one", b"two"):
        ch.basic_publish("", "q1", body)
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume("q1", lambda *a: None, consumer_tag="held")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conn.process_data_events(0.05)
        _, q, _ = call(http, "GET", "/api/queues/%2F/q1")
        if q.get("messages_unacknowledged") == 1:
            break
    yield http
    conn.close()


DECLARE_ERRORS = [
    "PUT_queue_q1_durable_mismatch",
    "PUT_queue_bad_x-max-length",
    "PUT_exchange_type_nope",
    "PUT_exchange_amq.custom_reserved",
    "DELETE_exchange_amq.direct",
    "DELETE_queue_missing",
    "DELETE_queue_q1_if-empty",
    "DELETE_queue_q1_if-unused",
]


@pytest.mark.parametrize("name", DECLARE_ERRORS)
def test_declare_and_delete_errors(state, name):
    replay(state, name)


PUBLISH_AND_GET = [
    "POST_publish_amq.default_unrouted",
    "POST_publish_bad_payload_encoding",
    "POST_publish_missing_exchange",
    "POST_queue_missing_get",
    "POST_queue_q1_get_bad_ackmode",
    "POST_queue_q1_get_bad_encoding",
]


@pytest.mark.parametrize("name", PUBLISH_AND_GET)
def test_publish_and_get_errors(state, name):
    replay(state, name)


POLICIES = [
    "PUT_policy_bad_apply-to",
    "PUT_policy_max-length_not_integer",
    "PUT_policy_missing_definition",
    "PUT_policy_unknown_key",
    "PUT_policy_p1_valid",
]


@pytest.mark.parametrize("name", POLICIES)
def test_policy_validation(state, name):
    replay(state, name)


def test_binding_lifecycle(state):
    headers = replay(state, "POST_binding_amq.direct_q1_rk")
    assert {k.lower(): v for k, v in headers.items()}["location"] == "q1/rk"
    replay(state, "POST_binding_missing_queue")
    replay(state, "POST_binding_missing_exchange")
    replay(state, "DELETE_binding_amq.direct_q1_rk")
    replay(state, "DELETE_binding_amq.direct_q1_rk_again")


def test_get_shows_messages_as_rabbitmq(state, node):
    """Binary payloads come back base64 in `auto` mode, text as a string; `truncate` cuts the
    bytes before encoding; requeued messages are redelivered (recorded shapes)."""
    amqp, http = node
    call(http, "PUT", "/api/queues/%2F/qbin", {"durable": False})
    conn = pika.BlockingConnection(pika.ConnectionParameters(port=amqp))
    ch = conn.channel()
    ch.basic_publish("", "qbin", bytes([0, 1, 2, 0xFF, 0xFE, 0x80]) + b"binary",
                     pika.BasicProperties(headers={"bin": "yes"}, content_type="application/octet-stream"))
    ch.basic_publish("", "qbin", "héllo utf8 ✓".encode(),
                     pika.BasicProperties(headers={"bin": "no"}, content_type="text/plain"))
    conn.close()
    status, got, _ = call(http, "POST", "/api/queues/%2F/qbin/get",
                          {"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000})
    want = recorded("POST_queue_qbin_get_base64")["body"]
    assert status == 200
    assert [m["payload_encoding"] for m in got] == ["base64", "string"]
    assert got[0]["payload"] == want[0]["payload"]
    assert got[0]["payload_bytes"] == want[0]["payload_bytes"]
    assert got[1]["payload"] == "héllo utf8 ✓"
    status, again, _ = call(http, "POST", "/api/queues/%2F/qbin/get",
                            {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 4})
    rec = recorded("POST_queue_qbin_get_truncate4")["body"][0]
    assert (again[0]["payload"], again[0]["payload_encoding"], again[0]["redelivered"]) == (
        rec["payload"], rec["payload_encoding"], True)
    call(http, "DELETE", "/api/queues/%2F/qbin")


def test_close_connection_with_reason(node):
    """DELETE /api/connections/{name} with X-Reason: the client sees 320 and the reason."""
    amqp, http = node
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        port=amqp, client_properties={"connection_name": "to-close"}))
    deadline = time.monotonic() + 5
    name = None
    while name is None and time.monotonic() < deadline:
        _, conns, _ = call(http, "GET", "/api/connections/")
        name = next((c["name"] for c in conns
                     if c["client_properties"].get("connection_name") == "to-close"), None)
    assert name, "connection not listed"
    path = "/api/connections/" + urllib.request.quote(name, safe="")
    assert call(http, "DELETE", path, headers={"X-Reason": "closed by test"})[0] == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        while True:
            conn.process_data_events(0.1)
    assert (e.value.reply_code, e.value.reply_text) == (320, "CONNECTION_FORCED - closed by test")


def test_health_checks(node):
    amqp, http = node
    assert call(http, "GET", f"/api/health/checks/port-listener/{amqp}")[:2] == (
        200, {"status": "ok", "port": amqp})
    status, body, _ = call(http, "GET", "/api/health/checks/port-listener/1234")
    assert (status, body["status"], body["reason"], body["missing"]) == (503, "failed", "No active listener", 1234)
    rec = recorded("GET_api_health_checks_protocol-listener_amqp")
    assert call(http, "GET", "/api/health/checks/protocol-listener/amqp")[:2] == (rec["status"], rec["body"])
    status, body, _ = call(http, "GET", "/api/health/checks/protocol-listener/mqtt")
    rec = recorded("GET_api_health_checks_protocol-listener_mqtt")
    assert (status, body["reason"], body["missing"]) == (rec["status"], rec["body"]["reason"], "mqtt")
    for name in ("node-is-quorum-critical", "node-is-mirror-sync-critical"):
        rec = recorded(f"GET_api_health_checks_{name}")
        assert call(http, "GET", f"/api/health/checks/{name}")[:2] == (rec["status"], rec["body"])
    assert call(http, "GET", "/api/aliveness-test/%2F")[:2] == (200, {"status": "ok"})


def test_paging_shape(node):
    amqp, http = node
    for i in range(3):
        call(http, "PUT", f"/api/queues/%2F/page-{i}", {"durable": False})
    status, page, _ = call(http, "GET", "/api/queues?page=1&page_size=2&name=page-&sort=name")
    rec = recorded("GET_api_queues_paged")["body"]
    assert status == 200
    assert sorted(page) == sorted(rec)
    assert (page["filtered_count"], page["item_count"], page["page_count"]) == (3, 2, 2)
    assert [q["name"] for q in page["items"]] == ["page-0", "page-1"]
    status, body, _ = call(http, "GET", "/api/queues?page=100")
    assert (status, body["error"]) == (400, "page_out_of_range")
    status, cols, _ = call(http, "GET", "/api/queues?columns=name,messages&sort=name")
    assert all(sorted(c) == ["messages", "name"] for c in cols)


def test_overview_counts_dead_lettered_messages(node):
    """Warren's addition to `message_stats` (the web UI charts it): `dead_lettered`, messages
    that died in a queue with a dead-letter exchange, with its rate. RabbitMQ 3.10.8 has no
    such field."""
    if os.environ.get("WARREN_EXTERNAL") == "1":
        pytest.skip("Warren's own field")
    amqp, http = node
    conn = pika.BlockingConnection(pika.ConnectionParameters(port=amqp))
    ch = conn.channel()
    ch.queue_declare("dl-counted", arguments={"x-message-ttl": 0, "x-dead-letter-exchange": "amq.fanout"})
    _, before, _ = call(http, "GET", "/api/overview")
    base = before["message_stats"].get("dead_lettered", 0)
    for _ in range(3):
        ch.basic_publish("", "dl-counted", b"expires at once")
    deadline = time.monotonic() + 10
    stats = {}
    while time.monotonic() < deadline:
        _, o, _ = call(http, "GET", "/api/overview")
        stats = o["message_stats"]
        if stats.get("dead_lettered") == base + 3:
            break
        time.sleep(0.05)
    assert stats.get("dead_lettered") == base + 3, stats
    assert "rate" in stats["dead_lettered_details"]
    ch.queue_delete("dl-counted")
    conn.close()
