"""The memory alarm with pika's blocked-connection callbacks: a publisher that publishes while
the broker's heap (jemalloc's count: messages, buffers, everything) exceeds
memory.high_watermark_bytes gets connection.blocked ("low on memory"); a consumer connection (never blocked) drains the queue; the publisher gets
connection.unblocked and its held-back publish goes through.
"""
import signal
import time

import pika

from test_crash import start


def test_blocked_and_unblocked_callbacks(tmp_path):
    config = tmp_path / "broker.toml"
    # In memory: with a data dir the queue would page these messages out past 8 MiB.
    config.write_text('[storage]\nmode = "memory"\n[memory]\nhigh_watermark_bytes = 16777216\n')
    data = tmp_path / "data"
    data.mkdir()
    proc, port = start(str(data), str(config))
    try:
        params = pika.ConnectionParameters("127.0.0.1", port, heartbeat=0)
        pub = pika.BlockingConnection(params)
        events = []
        pub.add_on_connection_blocked_callback(lambda conn, m: events.append(("blocked", m.method.reason)))
        pub.add_on_connection_unblocked_callback(lambda conn, m: events.append(("unblocked",)))
        pch = pub.channel()
        pch.queue_declare("alarm")
        for _ in range(32):
            pch.basic_publish("", "alarm", b"x" * (1 << 20))
        # The alarm is checked every 100 ms; each publish after it blocks the connection.
        deadline = time.monotonic() + 10
        while not events and time.monotonic() < deadline:
            pch.basic_publish("", "alarm", b"more")
            pub.process_data_events(time_limit=0.05)
        assert events == [("blocked", "low on memory")]
        other = pika.BlockingConnection(params)
        och = other.channel()
        purged = och.queue_purge("alarm").method.message_count
        assert purged >= 33
        deadline = time.monotonic() + 10
        while len(events) < 2 and time.monotonic() < deadline:
            pub.process_data_events(time_limit=0.05)
        assert events[1:] == [("unblocked",)]
        pch.basic_publish("", "alarm", b"after")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            n = och.queue_declare("alarm", passive=True).method.message_count
            if n >= 1:
                break
            time.sleep(0.01)
        assert n >= 1
        other.close()
        pub.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
