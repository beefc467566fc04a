"""`loopback_users` from a real non-loopback address, on AMQP and HTTP alike: a network namespace
joined to this one by a veth pair gives the client its own address (root only; skipped with the
reason when namespaces cannot be made). `guest` is refused from there as RabbitMQ refuses it
(403 on AMQP, `User can only log in via localhost` over HTTP); another user is let in."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import Broker

N = os.getpid() % 10000
NS = f"warren-lb-{N}"
HOST_IF, NS_IF = f"wlb{N}a", f"wlb{N}b"
SUBNET = f"10.{200 + N % 50}.{N % 250}"
HOST_IP, NS_IP = f"{SUBNET}.1", f"{SUBNET}.2"


def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def namespace():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    made = sh("ip", "netns", "add", NS)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace: {made.stderr.strip()}")
    try:
        for cmd in [
            ["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF],
            ["ip", "link", "set", NS_IF, "netns", NS],
            ["ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_IF],
            ["ip", "link", "set", HOST_IF, "up"],
            ["ip", "netns", "exec", NS, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_IF],
            ["ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up"],
            ["ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up"],
        ]:
            r = sh(*cmd)
            if r.returncode != 0:
                pytest.skip(f"cannot wire the namespace ({' '.join(cmd)}): {r.stderr.strip()}")
        yield NS
    finally:
        sh("ip", "link", "del", HOST_IF)
        sh("ip", "netns", "del", NS)


@pytest.fixture(scope="module")
def node(namespace):
    config = """
[management]
enabled = true
bind = "0.0.0.0"
port = 0

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]

[[users]]
name = "remote"
password = "remote-pw"
tags = ["management"]
"""
    b = Broker(config=config, bind="0.0.0.0")
    yield b
    b.stop()


CLIENT = textwrap.dedent("""
    import base64, json, sys, urllib.error, urllib.request
    import pika
    host, amqp_port, http_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = {}
    for user, pw in [("guest", "guest"), ("remote", "remote-pw")]:
        try:
            c = pika.BlockingConnection(pika.ConnectionParameters(
                host, amqp_port, credentials=pika.PlainCredentials(user, pw), connection_attempts=1))
            c.close()
            out[user + "_amqp"] = "ok"
        except Exception as e:
            out[user + "_amqp"] = repr(e)
        req = urllib.request.Request(f"http://{host}:{http_port}/api/whoami")
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                out[user + "_http"] = [r.status, json.loads(r.read())]
        except urllib.error.HTTPError as e:
            out[user + "_http"] = [e.code, json.loads(e.read() or b"null")]
    print(json.dumps(out))
""")


def test_loopback_users_are_refused_from_another_address(node, namespace):
    r = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", CLIENT,
         HOST_IP, str(node.port), str(node.mgmt_port)],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN" in out["guest_amqp"]
    assert out["guest_http"] == [401, {"error": "not_authorised",
                                       "reason": "User can only log in via localhost"}]
    assert out["remote_amqp"] == "ok"
    assert out["remote_http"] == [200, {"name": "remote", "tags": ["management"]}]
    # The refusal is logged with the peer address.
    assert any("can only connect via localhost" in line and NS_IP in line for line in node.lines)
    # From loopback, guest is let in.
    import pika
    pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port)).close()
