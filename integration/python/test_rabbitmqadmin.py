"""RabbitMQ's official CLI, rabbitmqadmin v2 (crate `rabbitmqadmin`, installed by scripts/test
into ~/.cache/warren/tools), run against Warren's management API: each command an operator uses, its
output checked. Warren needs no CLI of its own.
"""
import json
import os
import subprocess
import time

import pika
import pytest

from conftest import Broker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("RABBITMQADMIN", os.path.join(ROOT, "target", "tools", "bin", "rabbitmqadmin"))

CONFIG = """
[management]
enabled = true
bind = "127.0.0.1"
port = 0
stats_interval_ms = 100
"""

if not os.path.exists(BINARY):
    pytest.skip(f"rabbitmqadmin not installed at {BINARY} (scripts/test installs it)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def node():
    b = Broker(config=CONFIG)
    yield b
    b.stop()


def admin(node, *args, vhost=None, check=True):
    env = dict(os.environ,
               RABBITMQADMIN_TARGET_HOST="127.0.0.1",
               RABBITMQADMIN_TARGET_PORT=str(node.mgmt_port),
               RABBITMQADMIN_USERNAME="guest",
               RABBITMQADMIN_PASSWORD="guest")
    cmd = [BINARY, "--non-interactive"]
    if vhost:
        cmd += ["--vhost", vhost]
    r = subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def test_show_overview_and_nodes(node):
    out = admin(node, "show", "overview").stdout
    assert "3.10.8" in out or "Warren" in out, out
    assert "warren@localhost" in admin(node, "list", "nodes").stdout
    assert "warren@localhost" in admin(node, "nodes", "list").stdout


def test_declare_list_and_delete_topology(node):
    admin(node, "declare", "exchange", "--name", "events", "--type", "topic", "--durable", "true")
    admin(node, "declare", "queue", "--name", "events.audit", "--type", "classic", "--durable", "true")
    admin(node, "declare", "binding", "--source", "events", "--destination-type", "queue",
          "--destination", "events.audit", "--routing-key", "audit.#")
    assert "events.audit" in admin(node, "list", "queues").stdout
    assert "events" in admin(node, "list", "exchanges").stdout
    out = admin(node, "list", "bindings").stdout
    assert "audit.#" in out, out
    admin(node, "delete", "binding", "--source", "events", "--destination-type", "queue",
          "--destination", "events.audit", "--routing-key", "audit.#")
    assert "audit.#" not in admin(node, "list", "bindings").stdout
    admin(node, "delete", "queue", "--name", "events.audit")
    admin(node, "delete", "exchange", "--name", "events")
    assert "events.audit" not in admin(node, "list", "queues").stdout


def test_publish_get_and_purge(node):
    admin(node, "declare", "queue", "--name", "work", "--type", "classic", "--durable", "true")
    for i in range(3):
        admin(node, "publish", "message", "--exchange", "", "--routing-key", "work",
              "--payload", f"job-{i}")
    out = admin(node, "get", "messages", "--queue", "work", "--count", "1",
                "--ack-mode", "ack_requeue_false").stdout
    assert "job-0" in out, out
    admin(node, "purge", "queue", "--name", "work")
    queues = admin(node, "list", "queues").stdout
    assert "work" in queues
    out = admin(node, "get", "messages", "--queue", "work", "--count", "5",
                "--ack-mode", "ack_requeue_false").stdout
    assert "job-" not in out, out


def test_connections_channels_consumers_and_close(node):
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        port=node.port, client_properties={"connection_name": "admin-cli-test"}))
    ch = conn.channel()
    ch.queue_declare("consumed", auto_delete=True)
    ch.basic_consume("consumed", lambda *a: None, consumer_tag="cli-consumer")
    out = admin(node, "list", "connections").stdout
    assert "guest" in out, out
    assert "cli-consumer" in admin(node, "list", "consumers").stdout
    admin(node, "list", "channels")
    # The connection's name as the CLI lists it: `peer -> local`, first column.
    line = next(line for line in out.splitlines() if "->" in line)
    name = line.split("  ")[0].strip()
    assert name.startswith("127.0.0.1:") and " -> 127.0.0.1:" in name, line
    admin(node, "close", "connection", "--name", name)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            conn.process_data_events(0.1)
    assert e.value.reply_code == 320


def test_users_vhosts_permissions_and_policies(node):
    admin(node, "declare", "vhost", "--name", "cli-vh")
    assert "cli-vh" in admin(node, "list", "vhosts").stdout
    admin(node, "declare", "user", "--name", "cli-user", "--password", "s3cret", "--tags", "monitoring")
    assert "cli-user" in admin(node, "list", "users").stdout
    admin(node, "declare", "permissions", "--user", "cli-user", "--configure", ".*",
          "--write", ".*", "--read", ".*", vhost="cli-vh")
    assert "cli-user" in admin(node, "list", "permissions").stdout
    admin(node, "declare", "policy", "--name", "cli-dlx", "--pattern", "^orders\\.",
          "--apply-to", "queues", "--priority", "1",
          "--definition", json.dumps({"max-length": 100, "dead-letter-exchange": "dlx"}),
          vhost="cli-vh")
    assert "cli-dlx" in admin(node, "list", "policies").stdout
    admin(node, "delete", "policy", "--name", "cli-dlx", vhost="cli-vh")
    assert "cli-dlx" not in admin(node, "list", "policies").stdout
    admin(node, "delete", "permissions", "--user", "cli-user", vhost="cli-vh")
    admin(node, "delete", "user", "--name", "cli-user")
    admin(node, "delete", "vhost", "--name", "cli-vh")
    assert "cli-vh" not in admin(node, "list", "vhosts").stdout


def test_definitions_export_and_import(node, tmp_path):
    admin(node, "declare", "queue", "--name", "exported", "--type", "classic", "--durable", "true")
    path = tmp_path / "defs.json"
    admin(node, "definitions", "export", "--file", str(path))
    defs = json.loads(path.read_text())
    assert any(q["name"] == "exported" for q in defs["queues"])
    # Import into a fresh broker: the queue comes along.
    other = Broker(config=CONFIG)
    try:
        admin(other, "definitions", "import", "--file", str(path))
        assert "exported" in admin(other, "list", "queues").stdout
    finally:
        other.stop()


def test_health_checks(node):
    admin(node, "health_check", "local_alarms")
    admin(node, "health_check", "cluster_wide_alarms")
    admin(node, "health_check", "node_is_quorum_critical")
    admin(node, "health_check", "port_listener", "--port", str(node.port))
    admin(node, "health_check", "protocol_listener", "--protocol", "amqp")
    r = admin(node, "health_check", "port_listener", "--port", "1", check=False)
    assert r.returncode != 0
