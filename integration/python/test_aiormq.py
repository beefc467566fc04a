"""aiormq (aio-pika's protocol layer) against Warren: the close flows its own suite exercises
(test_closing_waiter_cancellation, test_connection_close_during_publish_drain). Those upstream
tests race inside the client and fail now and then against RabbitMQ 3.10.8 too; these keep the
broker-observable part deterministic: close-ok promptly, nothing after it, the socket left to
the client, and publishes before the close all routed."""
import asyncio
import logging
import os
import uuid

import aiormq
import pika

PORT = int(os.environ.get("WARREN_PORT", "5672"))
URL = f"amqp://guest:guest@127.0.0.1:{PORT}/"


def depth(queue):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", PORT))
    n = conn.channel().queue_declare(queue, passive=True).method.message_count
    conn.close()
    return n


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def test_cancelled_closing_waiter_leaves_the_connection_usable_and_close_is_clean():
    seen = Warnings()
    logging.getLogger("aiormq").addHandler(seen)

    async def run():
        conn = await aiormq.connect(URL)
        channel = await conn.channel()
        waiter = asyncio.ensure_future(conn.closing)
        await asyncio.sleep(0)
        waiter.cancel()
        assert not conn.is_closed
        await channel.basic_qos(prefetch_count=1)  # still serves RPC
        await conn.close()
        assert conn.is_closed
        assert conn._reader_task.done() and conn._writer_task.done()

    try:
        asyncio.run(asyncio.wait_for(run(), 20))
    finally:
        logging.getLogger("aiormq").removeHandler(seen)
    # "reader unexpected closed" would mean the broker closed the socket before close-ok.
    assert not [r for r in seen.records if "unexpected" in r or "abnormally" in r], seen.records


def test_publishes_before_close_are_routed_and_channel_close_is_answered():
    queue = f"aiormq-{uuid.uuid4().hex[:8]}"

    async def run():
        conn = await aiormq.connect(URL)
        channel = await conn.channel()
        await channel.queue_declare(queue)
        confirms = [await channel.basic_publish(b"m", routing_key=queue) for _ in range(200)]
        assert all(isinstance(c, aiormq.spec.Basic.Ack) for c in confirms)
        other = await conn.channel()
        await other.close()  # channel.close answered with close-ok
        assert other.is_closed and not conn.is_closed
        await conn.close(aiormq.exceptions.AMQPConnectionError("test close"))

    asyncio.run(asyncio.wait_for(run(), 20))
    assert depth(queue) == 200
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", PORT))
    conn.channel().queue_delete(queue)
    conn.close()
