"""What a RabbitMQ container image gives test frameworks, provided by the release binary (the
container image runs the same binary; Docker itself cannot run on this machine):

- RabbitMQ's variables: RABBITMQ_DEFAULT_USER / _PASS / _VHOST, RABBITMQ_NODE_PORT, and a
  rabbitmq.conf named by RABBITMQ_CONFIG_FILE (testcontainers' Go module writes one);
- the log line `Server startup complete` that the testcontainers modules wait for;
- `rabbitmqadmin` (v1 syntax), `rabbitmq-plugins` and `rabbitmqctl` when the binary is invoked
  under those names (the image's symlinks), running the exact commands the testcontainers
  Java and Go modules run inside the container;
- `warren reset` and `warren clock`.
"""
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time

import pika
import pytest

from conftest import ROOT

BIN = os.environ.get("WARREN_BIN", os.path.join(ROOT, "target", "release", "warren"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Node:
    """The binary started as a container would start it: configured by RabbitMQ's variables,
    ready when it logs `Server startup complete`."""

    def __init__(self, env, args=()):
        self.amqp = int(env.get("RABBITMQ_NODE_PORT") or free_port())
        self.http = free_port()
        self.data = tempfile.TemporaryDirectory(prefix="warren-ct-")
        # The suite's own WARREN_* settings (WARREN_PORT of the session broker) stay out.
        full = {k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}
        full.update(env)
        full["RABBITMQ_NODE_PORT"] = str(self.amqp)
        self.proc = subprocess.Popen(
            [BIN, "--bind", "127.0.0.1", "--management-port", str(self.http),
             "--data-dir", self.data.name, "--log-level", "info"] + list(args),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full)
        self.lines = []
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line)
                # testcontainers' wait strategy: `.*Server startup complete.*`
                if re.search(r".*Server startup complete.*", line):
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        assert ready.wait(30) and self.proc.poll() is None, "".join(self.lines)

    def tool(self, name, *args, env=None):
        """Run the binary under another name, as the image's symlinks do."""
        d = tempfile.mkdtemp(prefix="warren-tools-")
        link = os.path.join(d, name)
        os.symlink(BIN, link)
        full = {k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}
        full["WARREN_MANAGEMENT_PORT"] = str(self.http)
        full.update(env or {})
        return subprocess.run([link] + list(args), capture_output=True, text=True, env=full,
                              timeout=30)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def login(port, user, password, vhost="/"):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", port, vhost, pika.PlainCredentials(user, password)))


def test_rabbitmq_variables_and_the_startup_line():
    n = Node({"RABBITMQ_DEFAULT_USER": "admin", "RABBITMQ_DEFAULT_PASS": "s3cret",
              "RABBITMQ_DEFAULT_VHOST": "app"})
    try:
        assert any("Server startup complete" in line for line in n.lines)
        c = login(n.amqp, "admin", "s3cret", "app")
        c.channel().queue_declare("works")
        c.close()
        # guest is not created when another default user is named (the official image's rule).
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            login(n.amqp, "guest", "guest")
    finally:
        n.stop()


def test_the_ready_line_gives_every_listener():
    """`--in-memory --port 0`: one JSON line on stdout says where each listener is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}
    p = subprocess.Popen([BIN, "--in-memory", "--port", "0", "--management-port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        ready = json.loads(p.stdout.readline())
        assert ready["warren"] == "ready" and ready["prometheus"] is None
        host, port = ready["amqp"].rsplit(":", 1)
        login(int(port), "guest", "guest").close()
        assert ready["management"].startswith("127.0.0.1:")
    finally:
        p.terminate()
        p.wait(10)


def test_a_rabbitmq_conf_as_testcontainers_go_writes_it_wins_over_the_variables():
    with tempfile.TemporaryDirectory() as d:
        conf = os.path.join(d, "rabbitmq-testcontainers.conf")
        with open(conf, "w") as f:
            f.write("loopback_users.guest = false\ndefault_user = admin\ndefault_pass = password\n")
        n = Node({"RABBITMQ_DEFAULT_USER": "guest", "RABBITMQ_DEFAULT_PASS": "guest",
                  "RABBITMQ_CONFIG_FILE": conf})
        try:
            login(n.amqp, "admin", "password").close()
        finally:
            n.stop()


def test_the_commands_testcontainers_runs_inside_the_container():
    n = Node({})
    try:
        admin = lambda *a: n.tool("rabbitmqadmin", *a)  # noqa: E731
        # testcontainers-java 1.x / testcontainers-go (older) argument lists, verbatim shapes.
        for args in [
            ["declare", "vhost", "name=vhost1", "tracing=false"],
            ["declare", "queue", "name=queue1", "auto_delete=false", "durable=true",
             'arguments={"x-message-ttl":1000}'],
            ["--vhost=vhost1", "declare", "exchange", "name=direct-exchange", "type=direct",
             "auto_delete=false", "internal=false", "durable=true", "arguments={}"],
            ["declare", "exchange", "name=ex1", "type=fanout"],
            ["declare", "binding", "source=ex1", "destination=queue1", "routing_key=ns4",
             "destination_type=queue", "arguments={}"],
            ["declare", "user", "name=user1", "password=password1", "tags=administrator,management"],
            ["declare", "permission", "vhost=vhost1", "user=user1", "configure=.*", "write=.*",
             "read=.*"],
            ["declare", "policy", "--vhost=vhost1", "name=max length policy", "pattern=^dog",
             "priority=1", "apply-to=queues", 'definition={"max-length":1}'],
            ["declare", "operator_policy", "name=operator policy 1", "pattern=^queue1",
             "priority=1", "apply-to=queues", 'definition={"message-ttl":3600000}'],
            ["declare", "vhost_limit", "vhost=vhost1", "name=max-connections", "value=1"],
            ["declare", "parameter", "component=federation-upstream", "name=origin",
             'value={"uri":"amqp://user1:password1@localhost"}'],
        ]:
            r = admin(*args)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        r = n.tool("rabbitmq-plugins", "enable", "rabbitmq_shovel", "rabbitmq_random_exchange")
        assert r.returncode == 0, r.stderr
        r = n.tool("rabbitmq-plugins", "is_enabled", "rabbitmq_shovel", "--quiet")
        assert r.returncode == 0 and "rabbitmq_shovel is enabled" in r.stdout
        # What the modules' own tests then check.
        r = admin("list", "queues")
        assert r.returncode == 0 and "queue1" in r.stdout
        r = admin("--vhost=vhost1", "list", "exchanges")
        assert "direct-exchange" in r.stdout
        r = admin("list", "users")
        assert "user1" in r.stdout
        r = admin("--vhost=vhost1", "list", "policies")
        assert "max length policy" in r.stdout
        r = n.tool("rabbitmqctl", "list_queues", "name", "arguments")
        assert r.returncode == 0 and re.search(r"queue1\s.*x-message-ttl", r.stdout), r.stdout
        r = n.tool("rabbitmqctl", "list_exchanges", "-p", "vhost1")
        assert re.search(r"direct-exchange\s+direct", r.stdout), r.stdout
        c = login(n.amqp, "user1", "password1", "vhost1")
        ch = c.channel()
        ch.queue_declare("dog1")
        ch.confirm_delivery()  # both publishes enqueued before the count is read
        ch.basic_publish("", "dog1", b"a")
        ch.basic_publish("", "dog1", b"b")
        # max-length 1 from the policy: the second publish dropped the first.
        assert ch.queue_declare("dog1", passive=True).method.message_count == 1, "policy applied"
        assert ch.basic_get("dog1", auto_ack=True)[2] == b"b"
        c.close()
        r = n.tool("rabbitmqctl", "await_startup")
        assert r.returncode == 0
        r = admin("declare", "nonsense", "name=x")
        assert r.returncode != 0 and "not supported" in r.stderr
    finally:
        n.stop()


def test_the_image_configuration_starts_and_its_health_check_answers():
    """docker/broker.toml, as the Dockerfile installs it (ports moved for the test)."""
    conf = os.path.join(ROOT, "docker", "broker.toml")
    n = Node({"WARREN_CONFIG": conf, "WARREN_PROMETHEUS_PORT": "0"})
    try:
        login(n.amqp, "guest", "guest").close()
        for tool in ("rabbitmqctl", "rabbitmq-diagnostics"):
            r = n.tool(tool, "ping")
            assert r.returncode == 0 and "Ping succeeded" in r.stdout, r.stderr
    finally:
        n.stop()


def test_warren_reset_and_clock_subcommands():
    n = Node({})
    try:
        c = login(n.amqp, "guest", "guest")
        c.channel().queue_declare("leftover")
        c.close()
        url = f"http://127.0.0.1:{n.http}"
        r = subprocess.run([BIN, "reset", "--url", url], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["reset"] == "all"
        c = login(n.amqp, "guest", "guest")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            c.channel().queue_declare("leftover", passive=True)
        c.close()
        r = subprocess.run([BIN, "clock", "--url", url], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and json.loads(r.stdout)["mode"] == "real"
        # Advancing needs --test-clock.
        r = subprocess.run([BIN, "clock", "--url", url, "--advance-ms", "1000"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "--test-clock" in r.stderr
    finally:
        n.stop()
