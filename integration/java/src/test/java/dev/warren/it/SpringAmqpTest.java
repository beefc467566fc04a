package dev.warren.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.MessageProperties;
import dev.warren.it.support.Broker;
import dev.warren.it.support.Json;
import dev.warren.it.support.Names;
import dev.warren.it.support.Wait;
import java.nio.charset.StandardCharsets;
import java.util.Date;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.springframework.amqp.core.AcknowledgeMode;
import org.springframework.amqp.core.Binding;
import org.springframework.amqp.core.BindingBuilder;
import org.springframework.amqp.core.Declarables;
import org.springframework.amqp.core.DirectExchange;
import org.springframework.amqp.core.Message;
import org.springframework.amqp.core.Queue;
import org.springframework.amqp.core.QueueBuilder;
import org.springframework.amqp.core.ReturnedMessage;
import org.springframework.amqp.rabbit.config.RetryInterceptorBuilder;
import org.springframework.amqp.rabbit.connection.CachingConnectionFactory;
import org.springframework.amqp.rabbit.connection.CorrelationData;
import org.springframework.amqp.rabbit.core.RabbitAdmin;
import org.springframework.amqp.rabbit.core.RabbitTemplate;
import org.springframework.amqp.rabbit.listener.SimpleMessageListenerContainer;
import org.springframework.amqp.rabbit.retry.RejectAndDontRequeueRecoverer;
import org.springframework.context.support.GenericApplicationContext;

/** Spring AMQP (spring-rabbit 4.x, programmatic configuration, no Boot). */
class SpringAmqpTest {
    static Broker broker;
    Names names;
    CachingConnectionFactory cf;
    GenericApplicationContext ctx;

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
    void setUp() {
        names = new Names(broker);
    }

    @AfterEach
    void tearDown() {
        if (ctx != null) {
            ctx.close();
        }
        if (cf != null) {
            cf.destroy();
        }
        names.close();
    }

    CachingConnectionFactory connectionFactory(boolean confirmsAndReturns) {
        CachingConnectionFactory f = new CachingConnectionFactory(broker.factory());
        if (confirmsAndReturns) {
            f.setPublisherConfirmType(CachingConnectionFactory.ConfirmType.CORRELATED);
            f.setPublisherReturns(true);
        }
        return f;
    }

    /** An exchange, a work queue dead-lettering to a DLX with a routing key, the DLQ, and their bindings. */
    record Topology(String exchange, String queue, String routingKey, String dlx, String dlq, String dlrk) {
        Declarables declarables() {
            DirectExchange x = new DirectExchange(exchange, false, false);
            DirectExchange dx = new DirectExchange(dlx, false, false);
            Queue q = QueueBuilder.durable(queue).deadLetterExchange(dlx).deadLetterRoutingKey(dlrk).build();
            Queue dq = QueueBuilder.durable(dlq).build();
            Binding b = BindingBuilder.bind(q).to(x).with(routingKey);
            Binding db = BindingBuilder.bind(dq).to(dx).with(dlrk);
            return new Declarables(x, dx, q, dq, b, db);
        }
    }

    Topology topology(String hint) {
        return new Topology(names.exchange(hint), names.queue(hint), "work", names.exchange(hint + "-dlx"),
                names.queue(hint + "-dlq"), "dead");
    }

    /** A context holding the connection factory, a RabbitAdmin and the topology (the admin declares the Declarables). */
    RabbitAdmin declare(Topology t) {
        ctx = new GenericApplicationContext();
        ctx.registerBean("connectionFactory", CachingConnectionFactory.class, () -> cf);
        ctx.registerBean("rabbitAdmin", RabbitAdmin.class, () -> new RabbitAdmin(cf));
        ctx.registerBean("topology", Declarables.class, t::declarables);
        ctx.refresh();
        RabbitAdmin admin = ctx.getBean(RabbitAdmin.class);
        admin.initialize();
        return admin;
    }

    /** 11. RabbitAdmin declarations with DLX arguments; RabbitTemplate with correlated confirms and returns. */
    @Test
    void adminDeclaresAndTemplateConfirmsAndReturns() throws Exception {
        cf = connectionFactory(true);
        Topology t = topology("spring-admin");
        RabbitAdmin admin = declare(t);

        assertNotNull(admin.getQueueInfo(t.queue()), "declared: " + t.queue());
        assertNotNull(admin.getQueueInfo(t.dlq()), "declared: " + t.dlq());
        Map<String, Object> q = Wait.until("the queue in the management API", () -> broker.mgmt().queue(broker.vhost(), t.queue()));
        assertEquals(Boolean.TRUE, q.get("durable"));
        Map<String, Object> args = Json.obj(q.get("arguments"));
        assertEquals(t.dlx(), args.get("x-dead-letter-exchange"));
        assertEquals(t.dlrk(), args.get("x-dead-letter-routing-key"));

        RabbitTemplate template = new RabbitTemplate(cf);
        template.setMandatory(true);
        CompletableFuture<ReturnedMessage> returned = new CompletableFuture<>();
        template.setReturnsCallback(returned::complete);

        CorrelationData routed = new CorrelationData("routed-1");
        template.convertAndSend(t.exchange(), t.routingKey(), "hello spring", routed);
        CorrelationData.Confirm confirm = Wait.get(routed.getFuture(), "the confirm of a routed message");
        assertTrue(confirm.ack(), "ack");
        assertNull(routed.getReturned());
        assertEquals("hello spring", template.receiveAndConvert(t.queue(), Wait.TIMEOUT.toMillis()));

        CorrelationData unroutable = new CorrelationData("unroutable-1");
        template.convertAndSend(t.exchange(), "no-binding", "lost", unroutable);
        assertTrue(Wait.get(unroutable.getFuture(), "the confirm of an unroutable message").ack(), "an unroutable message is still acked");
        ReturnedMessage r = Wait.get(returned, "the ReturnsCallback");
        assertEquals(312, r.getReplyCode());
        assertEquals("NO_ROUTE", r.getReplyText());
        assertEquals(t.exchange(), r.getExchange());
        assertEquals("no-binding", r.getRoutingKey());
        assertEquals("lost", new String(r.getMessage().getBody(), StandardCharsets.UTF_8));
        assertNotNull(unroutable.getReturned(), "the correlation data carries the return");
        assertEquals(312, unroutable.getReturned().getReplyCode());
    }

    /** 12. A failing listener, stateless retry (3 attempts), then RejectAndDontRequeueRecoverer: the message is dead-lettered. */
    @Test
    void retryThenRejectToDeadLetterQueue() throws Exception {
        cf = connectionFactory(false);
        Topology t = topology("spring-retry");
        declare(t);
        AtomicInteger attempts = new AtomicInteger();
        SimpleMessageListenerContainer container = new SimpleMessageListenerContainer(cf);
        container.setQueueNames(t.queue());
        container.setAcknowledgeMode(AcknowledgeMode.AUTO);
        container.setReceiveTimeout(100); // consumer threads notice stop() sooner (default 1 s)
        container.setMessageListener(m -> {
            attempts.incrementAndGet();
            throw new IllegalStateException("listener failure, attempt " + attempts.get());
        });
        // spring-rabbit 4 retries with Spring Framework's core retry: maxRetries(2) = 3 attempts in all.
        container.setAdviceChain(RetryInterceptorBuilder.stateless()
                .maxRetries(2)
                .backOffOptions(50, 1.0, 50)
                .recoverer(new RejectAndDontRequeueRecoverer())
                .build());
        container.afterPropertiesSet();
        container.start();
        try {
            RabbitTemplate template = new RabbitTemplate(cf);
            template.convertAndSend(t.exchange(), t.routingKey(), "poison");
            Message dead = template.receive(t.dlq(), Wait.TIMEOUT.toMillis());
            assertNotNull(dead, "the message reached the DLQ");
            assertEquals("poison", new String(dead.getBody(), StandardCharsets.UTF_8));
            assertEquals(t.dlrk(), dead.getMessageProperties().getReceivedRoutingKey(), "x-dead-letter-routing-key applied");
            List<Map<String, ?>> xDeath = dead.getMessageProperties().getXDeathHeader();
            assertNotNull(xDeath, "x-death");
            assertEquals(1, xDeath.size());
            Map<String, ?> d = xDeath.get(0);
            assertEquals("rejected", String.valueOf(d.get("reason")));
            assertEquals(1L, assertInstanceOf(Long.class, d.get("count")));
            assertEquals(t.queue(), String.valueOf(d.get("queue")));
            assertEquals(t.exchange(), String.valueOf(d.get("exchange")));
            assertEquals(List.of(t.routingKey()), ((List<?>) d.get("routing-keys")).stream().map(String::valueOf).toList());
            assertInstanceOf(Date.class, d.get("time"));
            assertEquals("rejected", String.valueOf(dead.getMessageProperties().getHeaders().get("x-first-death-reason")));
        } finally {
            container.stop();
        }
        assertEquals(3, attempts.get(), "listener calls: 1 + 2 retries");
        assertEquals(0, new RabbitAdmin(cf).getQueueInfo(t.queue()).getMessageCount());
    }

    /** 13. Four competing consumers in one container: 2000 messages, each consumed once, spread over several consumers. */
    @Test
    void concurrentConsumersShareTheQueue() throws Exception {
        final int n = 2000;
        cf = connectionFactory(false);
        String queue = names.queue("spring-concurrency");
        RabbitAdmin admin = new RabbitAdmin(cf);
        admin.declareQueue(new Queue(queue, false, false, false));

        Map<String, AtomicInteger> seen = new ConcurrentHashMap<>();
        Map<String, AtomicInteger> byConsumerTag = new ConcurrentHashMap<>();
        Set<String> threads = ConcurrentHashMap.newKeySet();
        AtomicInteger deliveries = new AtomicInteger();
        CountDownLatch all = new CountDownLatch(n);
        SimpleMessageListenerContainer container = new SimpleMessageListenerContainer(cf);
        container.setQueueNames(queue);
        container.setConcurrentConsumers(4);
        container.setPrefetchCount(10);
        container.setReceiveTimeout(100);
        container.setMessageListener(m -> {
            deliveries.incrementAndGet();
            seen.computeIfAbsent(new String(m.getBody(), StandardCharsets.UTF_8), k -> new AtomicInteger()).incrementAndGet();
            byConsumerTag.computeIfAbsent(m.getMessageProperties().getConsumerTag(), k -> new AtomicInteger()).incrementAndGet();
            threads.add(Thread.currentThread().getName());
            all.countDown();
        });
        container.afterPropertiesSet();
        container.start();
        try {
            // The management API and queue.declare-ok both count four consumers while the container runs.
            Wait.until("consumers: 4 in GET /api/queues/{vhost}/{name}", () -> {
                Map<String, Object> q = broker.mgmt().queue(broker.vhost(), queue);
                return q != null && Long.valueOf(4).equals(q.get("consumers"));
            });
            assertEquals(4, admin.getQueueInfo(queue).getConsumerCount());

            try (Connection c = broker.factory().newConnection("spring-concurrency-publisher")) {
                Channel ch = c.createChannel();
                ch.confirmSelect();
                for (int i = 0; i < n; i++) {
                    ch.basicPublish("", queue, MessageProperties.TEXT_PLAIN, ("c-" + i).getBytes(StandardCharsets.UTF_8));
                }
                ch.waitForConfirmsOrDie(Wait.TIMEOUT.toMillis());
            }
            Wait.await(all, n + " deliveries");
        } finally {
            container.stop();
        }
        assertEquals(n, deliveries.get(), "deliveries in all (no duplicates)");
        assertEquals(n, seen.size(), "distinct messages");
        Set<String> expected = new HashSet<>();
        for (int i = 0; i < n; i++) {
            expected.add("c-" + i);
        }
        assertEquals(expected, seen.keySet());
        assertTrue(seen.values().stream().allMatch(v -> v.get() == 1), "each message exactly once");
        assertTrue(byConsumerTag.size() > 1, "more than one consumer did work: " + byConsumerTag);
        assertTrue(threads.size() > 1, "more than one listener thread did work: " + threads);
        assertEquals(n, byConsumerTag.values().stream().mapToInt(AtomicInteger::get).sum());
        assertEquals(0, admin.getQueueInfo(queue).getMessageCount(), "everything acked");
    }
}
