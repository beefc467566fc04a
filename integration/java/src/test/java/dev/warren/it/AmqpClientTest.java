package dev.warren.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.BuiltinExchangeType;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.ConfirmListener;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import com.rabbitmq.client.GetResponse;
import com.rabbitmq.client.LongString;
import com.rabbitmq.client.MessageProperties;
import com.rabbitmq.client.ShutdownSignalException;
import dev.warren.it.support.Broker;
import dev.warren.it.support.Names;
import dev.warren.it.support.Wait;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Date;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentSkipListSet;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** Scenarios with the RabbitMQ Java client (com.rabbitmq:amqp-client 5.x) against one broker. */
class AmqpClientTest {
    static Broker broker;
    Names names;
    Connection conn;

    @BeforeAll
    static void startBroker() {
        broker = Broker.start();
    }

    @AfterAll
    static void stopBroker() {
        if (broker != null) {
            broker.close();
        }
    }

    @BeforeEach
    void connect() throws Exception {
        names = new Names(broker);
        conn = broker.factory().newConnection(Names.unique("amqp-client"));
    }

    @AfterEach
    void disconnect() {
        if (conn != null && conn.isOpen()) {
            conn.abort(10_000);
        }
        names.close();
    }

    static String text(byte[] body) {
        return new String(body, StandardCharsets.UTF_8);
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    /** 1. Topology, 1000 persistent messages with publisher confirms (sync and async), manual acks with prefetch 50, in order. */
    @Test
    void publishConfirmedAndConsumeInOrder() throws Exception {
        final int n = 1000;
        String exchange = names.exchange("orders");
        String queue = names.queue("orders");
        Channel ch = conn.createChannel();
        ch.exchangeDeclare(exchange, BuiltinExchangeType.TOPIC, false, false, null);
        AMQP.Queue.DeclareOk ok = ch.queueDeclare(queue, false, false, false, null);
        assertEquals(queue, ok.getQueue());
        assertEquals(0, ok.getMessageCount());
        ch.queueBind(queue, exchange, "orders.#");

        ch.confirmSelect();
        ConcurrentSkipListSet<Long> outstanding = new ConcurrentSkipListSet<>();
        AtomicInteger nacks = new AtomicInteger();
        ch.addConfirmListener(new ConfirmListener() {
            @Override
            public void handleAck(long tag, boolean multiple) {
                settle(tag, multiple);
            }

            @Override
            public void handleNack(long tag, boolean multiple) {
                nacks.incrementAndGet();
                settle(tag, multiple);
            }

            private void settle(long tag, boolean multiple) {
                if (multiple) {
                    outstanding.headSet(tag, true).clear();
                } else {
                    outstanding.remove(tag);
                }
            }
        });
        for (int i = 0; i < n; i++) {
            outstanding.add(ch.getNextPublishSeqNo());
            ch.basicPublish(exchange, "orders.created." + (i % 7), true, MessageProperties.PERSISTENT_BASIC, bytes("m-" + i));
        }
        ch.waitForConfirmsOrDie(Wait.TIMEOUT.toMillis());
        // The async listener saw every sequence number acknowledged too.
        Wait.until("the ConfirmListener to see every ack", () -> outstanding.isEmpty());
        assertEquals(0, nacks.get(), "nacks");
        assertEquals(n, ch.queueDeclarePassive(queue).getMessageCount());

        Channel consumerCh = conn.createChannel();
        consumerCh.basicQos(50);
        List<String> got = Collections.synchronizedList(new ArrayList<>());
        AtomicInteger redelivered = new AtomicInteger();
        AtomicInteger nonPersistent = new AtomicInteger();
        CountDownLatch done = new CountDownLatch(n);
        // The first deliveries are held unacked: the prefetch window must stop the broker at 50.
        AtomicBoolean holding = new AtomicBoolean(true);
        AtomicLong lastHeld = new AtomicLong();
        CountDownLatch windowFull = new CountDownLatch(50);
        consumerCh.basicConsume(queue, false, new DefaultConsumer(consumerCh) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) throws IOException {
                got.add(text(body));
                if (env.isRedeliver()) {
                    redelivered.incrementAndGet();
                }
                if (props.getDeliveryMode() == null || props.getDeliveryMode() != 2) {
                    nonPersistent.incrementAndGet();
                }
                if (holding.get()) {
                    lastHeld.set(env.getDeliveryTag());
                    windowFull.countDown();
                } else {
                    getChannel().basicAck(env.getDeliveryTag(), false);
                }
                done.countDown();
            }
        });
        Wait.await(windowFull, "the first 50 deliveries");
        assertEquals(n - 50, ch.queueDeclarePassive(queue).getMessageCount(), "ready messages with 50 unacked");
        assertEquals(50, got.size(), "deliveries stop at the prefetch count");
        holding.set(false);
        consumerCh.basicAck(lastHeld.get(), true); // all 50 at once
        Wait.await(done, n + " deliveries");
        List<String> expected = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            expected.add("m-" + i);
        }
        synchronized (got) {
            assertEquals(n, new HashSet<>(got).size(), "no duplicates");
            assertEquals(expected, got, "all messages, in publish order");
        }
        assertEquals(0, redelivered.get());
        assertEquals(0, nonPersistent.get(), "delivery mode 2 kept");
        Wait.until("the queue to be empty with everything acked",
                () -> ch.queueDeclarePassive(queue).getMessageCount() == 0 ? Boolean.TRUE : null);
    }

    /** 2a. A channel error closes the channel (soft error) and leaves the connection open. */
    @Test
    void channelErrorIsSoftAndConnectionSurvives() throws Exception {
        String missing = Names.unique("missing");
        Channel ch = conn.createChannel();
        CompletableFuture<ShutdownSignalException> seen = new CompletableFuture<>();
        ch.addShutdownListener(seen::complete);
        IOException e = assertThrows(IOException.class, () -> ch.queueDeclarePassive(missing));
        ShutdownSignalException sse = assertInstanceOf(ShutdownSignalException.class, e.getCause());
        AMQP.Channel.Close close = assertInstanceOf(AMQP.Channel.Close.class, sse.getReason());
        assertEquals(404, close.getReplyCode());
        assertEquals("NOT_FOUND - no queue '" + missing + "' in vhost '/'", close.getReplyText());
        assertEquals(50, close.getClassId(), "queue class");
        assertEquals(10, close.getMethodId(), "queue.declare");

        ShutdownSignalException heard = Wait.get(seen, "the channel's ShutdownListener");
        assertFalse(heard.isHardError(), "a channel error is soft");
        assertFalse(heard.isInitiatedByApplication());
        assertSame(ch, heard.getReference());
        assertEquals(404, ((AMQP.Channel.Close) heard.getReason()).getReplyCode());
        assertFalse(ch.isOpen());

        assertTrue(conn.isOpen(), "the connection survives a channel error");
        Channel again = conn.createChannel();
        String q = names.queue("after-error");
        again.queueDeclare(q, false, false, false, null);
        again.basicPublish("", q, null, bytes("still here"));
        GetResponse r = Wait.until("the message", () -> again.basicGet(q, true));
        assertEquals("still here", text(r.getBody()));
    }

    /** 2b. The management API closes a connection: a hard error 320 with the X-Reason text. */
    @Test
    void connectionClosedThroughManagementApiIsHardError() throws Exception {
        String clientName = Names.unique("forced");
        Connection c = broker.factory().newConnection(clientName);
        try {
            CompletableFuture<ShutdownSignalException> seen = new CompletableFuture<>();
            c.addShutdownListener(seen::complete);
            String serverName = Wait.until("the connection in GET /api/connections",
                    () -> broker.mgmt().connectionNamed(clientName));
            int status = broker.mgmt().delete("/api/connections/" + dev.warren.it.support.Mgmt.seg(serverName),
                    Map.of("X-Reason", "bye"));
            assertEquals(204, status, "DELETE /api/connections/{name}");
            ShutdownSignalException sse = Wait.get(seen, "the connection's ShutdownListener");
            assertTrue(sse.isHardError(), "a connection error is hard");
            assertFalse(sse.isInitiatedByApplication());
            AMQP.Connection.Close close = assertInstanceOf(AMQP.Connection.Close.class, sse.getReason());
            assertEquals(320, close.getReplyCode());
            assertEquals("CONNECTION_FORCED - bye", close.getReplyText());
            assertEquals(0, close.getClassId());
            assertEquals(0, close.getMethodId());
            assertFalse(c.isOpen());
        } finally {
            if (c.isOpen()) {
                c.abort();
            }
        }
    }

    /** 4. An unroutable mandatory publish comes back: 312 NO_ROUTE. */
    @Test
    void mandatoryUnroutableIsReturned() throws Exception {
        String exchange = names.exchange("nowhere");
        Channel ch = conn.createChannel();
        ch.exchangeDeclare(exchange, BuiltinExchangeType.DIRECT, false, false, null);
        CompletableFuture<Object[]> returned = new CompletableFuture<>();
        ch.addReturnListener((code, replyText, ex, key, props, body) ->
                returned.complete(new Object[] {code, replyText, ex, key, props, text(body)}));
        ch.confirmSelect();
        AMQP.BasicProperties props = new AMQP.BasicProperties.Builder().messageId("ret-1").contentType("text/plain").build();
        ch.basicPublish(exchange, "no-such-key", true, props, bytes("lost?"));
        ch.waitForConfirmsOrDie(Wait.TIMEOUT.toMillis()); // an unroutable message is still confirmed
        // The broker sends basic.return before basic.ack, and the client handles frames in order.
        assertTrue(returned.isDone(), "basic.return arrived before the publisher confirm");
        Object[] r = Wait.get(returned, "basic.return");
        assertEquals(312, r[0]);
        assertEquals("NO_ROUTE", r[1]);
        assertEquals(exchange, r[2]);
        assertEquals("no-such-key", r[3]);
        assertEquals("ret-1", ((AMQP.BasicProperties) r[4]).getMessageId());
        assertEquals("text/plain", ((AMQP.BasicProperties) r[4]).getContentType());
        assertEquals("lost?", r[5]);
    }

    /** 5. Deleting the queue cancels its consumer: handleCancel (not handleCancelOk). */
    @Test
    void deletingTheQueueCancelsTheConsumer() throws Exception {
        String queue = names.queue("cancel");
        Channel ch = conn.createChannel();
        ch.queueDeclare(queue, false, false, false, null);
        CompletableFuture<String> cancelled = new CompletableFuture<>();
        CompletableFuture<String> cancelOk = new CompletableFuture<>();
        String tag = ch.basicConsume(queue, false, new DefaultConsumer(ch) {
            @Override
            public void handleCancel(String consumerTag) {
                cancelled.complete(consumerTag);
            }

            @Override
            public void handleCancelOk(String consumerTag) {
                cancelOk.complete(consumerTag);
            }
        });
        assertEquals(1, ch.queueDeclarePassive(queue).getConsumerCount());
        Channel other = conn.createChannel();
        other.queueDelete(queue);
        assertEquals(tag, Wait.get(cancelled, "handleCancel"));
        assertFalse(cancelOk.isDone(), "a broker-initiated cancel is not a cancel-ok");
        assertTrue(ch.isOpen(), "the consumer's channel stays open");
    }

    /** 6. basic.reject without requeue dead-letters with x-death, as RabbitMQ writes it. */
    @Test
    void rejectedMessageIsDeadLetteredWithXDeath() throws Exception {
        String dlx = names.exchange("dlx");
        String dlq = names.queue("dlq");
        String queue = names.queue("work");
        Channel ch = conn.createChannel();
        ch.exchangeDeclare(dlx, BuiltinExchangeType.FANOUT, false, false, null);
        ch.queueDeclare(dlq, false, false, false, null);
        ch.queueBind(dlq, dlx, "");
        ch.queueDeclare(queue, false, false, false, Map.of("x-dead-letter-exchange", dlx));
        AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                .messageId("dl-1").headers(Map.of("app", "kept")).build();
        long before = System.currentTimeMillis() / 1000 * 1000;
        ch.basicPublish("", queue, props, bytes("reject me"));
        GetResponse first = Wait.until("the message on " + queue, () -> ch.basicGet(queue, false));
        ch.basicReject(first.getEnvelope().getDeliveryTag(), false);
        GetResponse dead = Wait.until("the message on the DLQ", () -> ch.basicGet(dlq, true));
        long after = System.currentTimeMillis();

        assertEquals("reject me", text(dead.getBody()));
        assertEquals("dl-1", dead.getProps().getMessageId());
        assertEquals(dlx, dead.getEnvelope().getExchange());
        assertEquals(queue, dead.getEnvelope().getRoutingKey(), "dead-lettered with the original routing key");
        Map<String, Object> headers = dead.getProps().getHeaders();
        assertNotNull(headers);
        assertEquals("kept", String.valueOf(headers.get("app")));

        List<?> xDeath = assertInstanceOf(List.class, headers.get("x-death"));
        assertEquals(1, xDeath.size());
        Map<?, ?> death = assertInstanceOf(Map.class, xDeath.get(0));
        assertEquals(java.util.Set.of("count", "reason", "queue", "time", "exchange", "routing-keys"), death.keySet());
        assertEquals(Long.valueOf(1), assertInstanceOf(Long.class, death.get("count")));
        assertEquals("rejected", assertInstanceOf(LongString.class, death.get("reason")).toString());
        assertEquals(queue, assertInstanceOf(LongString.class, death.get("queue")).toString());
        assertEquals("", assertInstanceOf(LongString.class, death.get("exchange")).toString());
        List<?> keys = assertInstanceOf(List.class, death.get("routing-keys"));
        assertEquals(1, keys.size());
        assertEquals(queue, assertInstanceOf(LongString.class, keys.get(0)).toString());
        Date time = assertInstanceOf(Date.class, death.get("time"));
        assertTrue(time.getTime() >= before - 1000 && time.getTime() <= after + 1000, "x-death time " + time);
        assertEquals("rejected", assertInstanceOf(LongString.class, headers.get("x-first-death-reason")).toString());
        assertEquals(queue, assertInstanceOf(LongString.class, headers.get("x-first-death-queue")).toString());
        assertEquals("", assertInstanceOf(LongString.class, headers.get("x-first-death-exchange")).toString());
        assertNull(ch.basicGet(queue, true), "the source queue is empty");
    }

    /** 7. x-consumer-timeout: an unacked delivery past the timeout closes the channel with 406 and is redelivered. */
    @Test
    void consumerTimeoutClosesChannelAndRedelivers() throws Exception {
        assumeFalse(Broker.isExternal(), "x-consumer-timeout needs RabbitMQ 3.12+; the reference is 3.10.8");
        String queue = names.queue("slow");
        Channel ch = conn.createChannel();
        ch.queueDeclare(queue, false, false, false, Map.of("x-consumer-timeout", 1000));
        ch.basicPublish("", queue, null, bytes("hold me"));
        CompletableFuture<ShutdownSignalException> closed = new CompletableFuture<>();
        CompletableFuture<Envelope> firstDelivery = new CompletableFuture<>();
        Channel slow = conn.createChannel();
        slow.addShutdownListener(closed::complete);
        slow.basicConsume(queue, false, new DefaultConsumer(slow) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
                firstDelivery.complete(env); // and never ack
            }
        });
        assertFalse(Wait.get(firstDelivery, "the first delivery").isRedeliver());
        ShutdownSignalException sse = Wait.get(closed, "the channel to be closed by the consumer timeout");
        assertFalse(sse.isHardError());
        AMQP.Channel.Close close = assertInstanceOf(AMQP.Channel.Close.class, sse.getReason());
        assertEquals(406, close.getReplyCode());
        assertEquals("PRECONDITION_FAILED - delivery acknowledgement on channel " + slow.getChannelNumber()
                + " timed out. Timeout value used: 1000 ms. This timeout value can be configured, see consumers doc guide to learn more",
                close.getReplyText());
        assertEquals(0, close.getClassId(), "not caused by a method");
        assertEquals(0, close.getMethodId());
        assertTrue(conn.isOpen(), "only the channel is closed");

        Channel fresh = conn.createChannel();
        CompletableFuture<Object[]> again = new CompletableFuture<>();
        fresh.basicConsume(queue, false, new DefaultConsumer(fresh) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) throws IOException {
                getChannel().basicAck(env.getDeliveryTag(), false);
                again.complete(new Object[] {env.isRedeliver(), text(body)});
            }
        });
        Object[] r = Wait.get(again, "the redelivery");
        assertEquals(Boolean.TRUE, r[0], "redelivered flag");
        assertEquals("hold me", r[1]);
    }
}
