"""AMQPS and HTTPS with pika and urllib: a custom CA, password login, a client certificate with
the EXTERNAL mechanism (the user is the certificate's common name), an untrusted certificate,
TLS 1.2 and 1.3. Certificates are made at run time (rcgen, examples/test_certs.rs)."""
import json
import os
import ssl
import tempfile
import urllib.request

import pika
import pytest

from conftest import Broker, make_certs


@pytest.fixture(scope="module")
def tls_node():
    if os.environ.get("WARREN_EXTERNAL") == "1":
        pytest.skip("needs a broker started with the generated certificates")
    d = tempfile.TemporaryDirectory(prefix="warren-certs-")
    make_certs(d.name)
    config = f"""
[amqps]
enabled = true
bind = "127.0.0.1"
port = 0

[management]
enabled = true
bind = "127.0.0.1"
port = 0
tls = true

[tls]
cert_file = "{d.name}/server.pem"
key_file = "{d.name}/server.key"
ca_file = "{d.name}/ca.pem"
verify_peer = true

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]

[[users]]
name = "tls-user"
vhosts = ["*"]
"""
    b = Broker(config=config)
    yield b, d.name
    b.stop()
    d.cleanup()


def context(certs, client=None, version=None):
    ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))
    if client:
        ctx.load_cert_chain(os.path.join(certs, f"{client}.pem"), os.path.join(certs, f"{client}.key"))
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def params(b, ctx, credentials=None):
    kw = {"credentials": credentials} if credentials else {}
    return pika.ConnectionParameters("localhost", b.amqps_port, connection_attempts=1,
                                     ssl_options=pika.SSLOptions(ctx, "localhost"), **kw)


def round_trip(conn, user_id=None):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    props = pika.BasicProperties(user_id=user_id) if user_id else None
    ch.basic_publish("", q, b"over tls", props)
    for _ in range(100):
        method, got_props, body = ch.basic_get(q, auto_ack=True)
        if method:
            assert body == b"over tls"
            return got_props
    raise AssertionError("message not delivered")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_password_login_over_tls(tls_node, version):
    b, certs = tls_node
    conn = pika.BlockingConnection(params(b, context(certs, version=version)))
    round_trip(conn)
    conn.close()


def test_external_logs_in_as_the_certificate_common_name(tls_node):
    b, certs = tls_node
    conn = pika.BlockingConnection(
        params(b, context(certs, client="client"), pika.credentials.ExternalCredentials()))
    # user_id must equal the authenticated user: proof of who the broker thinks we are.
    props = round_trip(conn, user_id="tls-user")
    assert props.user_id == "tls-user"
    conn.close()


def test_external_without_a_certificate_is_refused(tls_node):
    b, certs = tls_node
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params(b, context(certs), pika.credentials.ExternalCredentials()))


def test_an_untrusted_client_certificate_is_refused(tls_node):
    b, certs = tls_node
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params(b, context(certs, client="untrusted")))
    # The broker serves on.
    conn = pika.BlockingConnection(params(b, context(certs)))
    round_trip(conn)
    conn.close()


def test_management_api_over_https(tls_node):
    b, certs = tls_node
    req = urllib.request.Request(f"https://localhost:{b.mgmt_port}/api/whoami")
    req.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
    with urllib.request.urlopen(req, context=context(certs), timeout=10) as r:
        assert json.loads(r.read()) == {"name": "guest", "tags": ["administrator"]}
