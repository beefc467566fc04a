"""pika smoke suite: handshake, many channels, clean closes, auth and vhost failures."""
import os
import socket

import pika
import pytest


def params(port, **kw):
    return pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1, **kw)


def test_handshake_reports_server_properties(port):
    conn = pika.BlockingConnection(params(port))
    props = conn._impl.server_properties
    assert props["product"] in ("Warren", "RabbitMQ")
    for key in ("version", "platform", "copyright", "information", "cluster_name", "capabilities"):
        assert key in props
    assert props["capabilities"]["authentication_failure_close"] is True
    assert conn._impl.params.frame_max == 131072
    assert conn._impl.params.channel_max == 2047
    conn.close()
    assert conn.is_closed


def test_open_100_channels_and_close(port):
    conn = pika.BlockingConnection(params(port))
    channels = [conn.channel() for _ in range(100)]
    assert all(ch.is_open for ch in channels)
    for ch in channels[:50]:
        ch.close()
    assert all(ch.is_closed for ch in channels[:50])
    more = [conn.channel() for _ in range(10)]
    assert all(ch.is_open for ch in more)
    conn.close()


def test_wrong_password_is_access_refused(port):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
        pika.BlockingConnection(params(port, credentials=pika.PlainCredentials("guest", "nope")))
    assert "403" in str(e.value) and "ACCESS_REFUSED" in str(e.value)


def test_unknown_vhost_is_not_allowed(port):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(params(port, virtual_host="no-such-vhost"))
    assert "530" in str(e.value) and "NOT_ALLOWED - vhost no-such-vhost not found" in str(e.value)


def test_heartbeat_negotiation(port):
    conn = pika.BlockingConnection(params(port, heartbeat=5))
    assert conn._impl.params.heartbeat == 5
    conn.process_data_events(time_limit=0.1)
    assert conn.is_open
    conn.close()


def test_bad_protocol_header_gets_ours_back(port):
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"AMQP\x00\x00\x08\x00")
        data = b""
        while True:
            chunk = s.recv(64)
            if not chunk:
                break
            data += chunk
    assert data == b"AMQP\x00\x00\x09\x01"
