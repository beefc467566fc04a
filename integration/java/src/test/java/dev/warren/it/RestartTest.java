package dev.warren.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.BuiltinExchangeType;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import com.rabbitmq.client.MessageProperties;
import com.rabbitmq.client.Recoverable;
import com.rabbitmq.client.RecoveryListener;
import com.rabbitmq.client.ShutdownSignalException;
import com.rabbitmq.client.impl.recovery.AutorecoveringConnection;
import dev.warren.it.support.Broker;
import dev.warren.it.support.Names;
import dev.warren.it.support.Wait;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** Broker restarts (Warren only: the suite never restarts an external broker). */
class RestartTest {
    static final String SHUTDOWN_TEXT = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'";

    @BeforeEach
    void onlyWarren() {
        assumeFalse(Broker.isExternal(), "restarts the broker");
    }

    /** 9. Confirmed persistent messages in a durable queue survive SIGTERM and kill -9. */
    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"SIGTERM", "SIGKILL"})
    void confirmedPersistentMessagesSurviveRestart(String signal) throws Exception {
        final int n = 500;
        try (Broker broker = Broker.startWarren(new Broker.Options().durable())) {
            String queue = Names.unique("durable");
            Connection c = broker.factory().newConnection("restart-publisher");
            Channel ch = c.createChannel();
            ch.queueDeclare(queue, true, false, false, null);
            ch.confirmSelect();
            for (int i = 0; i < n; i++) {
                ch.basicPublish("", queue, MessageProperties.PERSISTENT_TEXT_PLAIN, ("p-" + i).getBytes(StandardCharsets.UTF_8));
            }
            ch.waitForConfirmsOrDie(Wait.TIMEOUT.toMillis());
            int port = broker.port();
            if (signal.equals("SIGTERM")) {
                assertEquals(0, broker.stop(), "exit code after SIGTERM");
            } else {
                broker.kill(); // the publisher's connection is still open: no clean close anywhere
            }
            c.abort(1000);
            broker.restart();
            assertEquals(port, broker.port());

            try (Connection c2 = broker.factory().newConnection("restart-consumer")) {
                Channel ch2 = c2.createChannel();
                AMQP.Queue.DeclareOk ok = ch2.queueDeclarePassive(queue);
                assertEquals(n, ok.getMessageCount(), "every confirmed message is back");
                ch2.basicQos(100);
                List<String> got = Collections.synchronizedList(new ArrayList<>());
                CountDownLatch all = new CountDownLatch(n);
                ch2.basicConsume(queue, false, new DefaultConsumer(ch2) {
                    @Override
                    public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) throws IOException {
                        got.add(new String(body, StandardCharsets.UTF_8) + (props.getDeliveryMode() == 2 ? "" : " (not persistent)"));
                        getChannel().basicAck(env.getDeliveryTag(), false);
                        all.countDown();
                    }
                });
                Wait.await(all, n + " recovered messages");
                List<String> expected = new ArrayList<>();
                for (int i = 0; i < n; i++) {
                    expected.add("p-" + i);
                }
                synchronized (got) {
                    assertEquals(expected, got);
                }
            }
        }
    }

    /** 10. Automatic connection and topology recovery across a broker restart on the same port. */
    @Test
    void automaticRecoveryAfterBrokerRestart() throws Exception {
        try (Broker broker = Broker.startWarren(new Broker.Options().durable())) {
            ConnectionFactory f = broker.factory();
            f.setAutomaticRecoveryEnabled(true);
            f.setTopologyRecoveryEnabled(true);
            f.setNetworkRecoveryInterval(200);
            Connection c = f.newConnection("recovering");
            try {
                assertInstanceOf(AutorecoveringConnection.class, c);
                CountDownLatch recovered = new CountDownLatch(1);
                CountDownLatch recoveryStarted = new CountDownLatch(1);
                ((Recoverable) c).addRecoveryListener(new RecoveryListener() {
                    @Override
                    public void handleRecovery(Recoverable r) {
                        recovered.countDown();
                    }

                    @Override
                    public void handleRecoveryStarted(Recoverable r) {
                        recoveryStarted.countDown();
                    }
                });
                CompletableFuture<String[]> renamed = new CompletableFuture<>();
                ((AutorecoveringConnection) c).addQueueRecoveryListener((oldName, newName) -> renamed.complete(new String[] {oldName, newName}));
                CompletableFuture<ShutdownSignalException> shutdown = new CompletableFuture<>();
                c.addShutdownListener(shutdown::complete);

                Channel ch = c.createChannel();
                String exchange = Names.unique("rec-x");
                String durable = Names.unique("rec-durable");
                // A transient exchange: after the restart it, and every binding to it, exists only if the client redeclares it.
                ch.exchangeDeclare(exchange, BuiltinExchangeType.DIRECT, false, false, null);
                String serverNamed = ch.queueDeclare().getQueue(); // server-named, exclusive, auto-delete
                assertTrue(serverNamed.startsWith("amq.gen-"), serverNamed);
                ch.queueDeclare(durable, true, false, false, null);
                ch.queueBind(serverNamed, exchange, "k");
                ch.queueBind(durable, exchange, "k");
                BlockingQueue<String> toServerNamed = new LinkedBlockingQueue<>();
                BlockingQueue<String> toDurable = new LinkedBlockingQueue<>();
                ch.basicConsume(serverNamed, true, (tag, d) -> toServerNamed.add(new String(d.getBody(), StandardCharsets.UTF_8)), tag -> { });
                ch.basicConsume(durable, true, (tag, d) -> toDurable.add(new String(d.getBody(), StandardCharsets.UTF_8)), tag -> { });

                ch.basicPublish(exchange, "k", null, "before".getBytes(StandardCharsets.UTF_8));
                assertEquals("before", toServerNamed.poll(30, TimeUnit.SECONDS));
                assertEquals("before", toDurable.poll(30, TimeUnit.SECONDS));

                broker.restart(); // SIGTERM, wait for exit, start again on the same port and data directory

                ShutdownSignalException sse = Wait.get(shutdown, "the connection's ShutdownListener");
                assertTrue(sse.isHardError());
                assertFalse(sse.isInitiatedByApplication());
                AMQP.Connection.Close close = assertInstanceOf(AMQP.Connection.Close.class, sse.getReason());
                assertEquals(320, close.getReplyCode());
                assertEquals(SHUTDOWN_TEXT, close.getReplyText());
                assertEquals(0, close.getClassId());
                assertEquals(0, close.getMethodId());

                Wait.await(recoveryStarted, "RecoveryListener.handleRecoveryStarted");
                Wait.await(recovered, "RecoveryListener.handleRecovery");
                assertTrue(c.isOpen());
                String[] names = Wait.get(renamed, "the server-named queue to be redeclared");
                assertEquals(serverNamed, names[0]);
                assertNotEquals(serverNamed, names[1], "a server-named queue comes back under a new name");
                assertTrue(names[1].startsWith("amq.gen-"), names[1]);

                ch.basicPublish(exchange, "k", null, "after".getBytes(StandardCharsets.UTF_8));
                assertEquals("after", toServerNamed.poll(30, TimeUnit.SECONDS), "through the recovered binding to the recovered server-named queue");
                assertEquals("after", toDurable.poll(30, TimeUnit.SECONDS), "through the recovered binding to the durable queue");
                Channel check = c.createChannel();
                assertEquals(1, check.queueDeclarePassive(names[1]).getConsumerCount());
                assertEquals(1, check.queueDeclarePassive(durable).getConsumerCount());
                check.queueDelete(durable);
            } finally {
                c.abort(10_000);
            }
        }
    }
}
