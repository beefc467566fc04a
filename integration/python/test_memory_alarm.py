"""The memory alarm with pika's blocked-connection callbacks: a publisher that publishes while
the broker's heap (jemalloc's count: messages, buffers, everything) exceeds
memory.high_watermark_bytes gets connection.blocked ("low on memory"); a consumer connection (never blocked) drains the queue; the publisher gets
connection.unblocked and its held-back publish goes through.
"""
import signal
import threading
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
        # 20 MiB from another connection, in a thread: once the alarm is on, the broker stops
        # reading that connection, and pika's blocking publish waits until it is lifted (a
        # publisher that filled the broker itself would wait forever in this test).
        def fill():
            c = pika.BlockingConnection(params)
            ch = c.channel()
            for _ in range(20):
                ch.basic_publish("", "alarm", b"x" * (1 << 20))
            c.close()

        filler = threading.Thread(target=fill, daemon=True)
        filler.start()
        # The alarm is checked every 100 ms; a publish after it blocks this connection too.
        deadline = time.monotonic() + 20
        while not events and time.monotonic() < deadline:
            pch.basic_publish("", "alarm", b"more")
            pub.process_data_events(time_limit=0.05)
        assert events == [("blocked", "low on memory")]
        other = pika.BlockingConnection(params)
        och = other.channel()
        purged = och.queue_purge("alarm").method.message_count
        assert purged >= 1
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
        filler.join(10)
        assert not filler.is_alive(), "the filler's publishes went through once unblocked"
        other.close()
        pub.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
