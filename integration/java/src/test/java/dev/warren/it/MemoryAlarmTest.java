package dev.warren.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import com.rabbitmq.client.BlockedListener;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import dev.warren.it.support.Broker;
import dev.warren.it.support.Wait;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/** 3. The memory alarm: connection.blocked ("low on memory") and connection.unblocked (needs a config file: Warren only). */
class MemoryAlarmTest {
    private static final int MIB = 1 << 20;

    @Test
    void blockedAndUnblockedListeners() throws Exception {
        assumeFalse(Broker.isExternal(), "needs a broker started with a low memory high watermark");
        Broker.Options options = new Broker.Options()
                .config("[storage]\nmode = \"memory\"\n\n[memory]\nhigh_watermark_bytes = 16777216\n");
        try (Broker broker = Broker.startWarren(options)) {
            String queue = "alarm";
            Connection pub = broker.factory().newConnection("alarm-publisher");
            Connection filler = broker.factory().newConnection("alarm-filler");
            Connection drainer = broker.factory().newConnection("alarm-drainer");
            try {
                List<String> events = new CopyOnWriteArrayList<>();
                CountDownLatch blocked = new CountDownLatch(1);
                CountDownLatch unblocked = new CountDownLatch(1);
                pub.addBlockedListener(new BlockedListener() {
                    @Override
                    public void handleBlocked(String reason) {
                        events.add("blocked: " + reason);
                        blocked.countDown();
                    }

                    @Override
                    public void handleUnblocked() {
                        events.add("unblocked");
                        unblocked.countDown();
                    }
                });
                Channel pch = pub.createChannel();
                pch.queueDeclare(queue, false, false, false, null);

                // 20 MiB stays queued (no consumer yet), from another connection in a thread: once the
                // alarm is on, the broker stops reading publishing connections and the filler's writes stall.
                AtomicInteger filled = new AtomicInteger();
                AtomicBoolean fillerFailed = new AtomicBoolean();
                Thread fill = new Thread(() -> {
                    try {
                        Channel ch = filler.createChannel();
                        byte[] body = new byte[MIB];
                        for (int i = 0; i < 20; i++) {
                            ch.basicPublish("", queue, null, body);
                            filled.incrementAndGet();
                        }
                    } catch (Exception e) {
                        fillerFailed.set(true);
                    }
                }, "alarm-filler");
                fill.setDaemon(true);
                fill.start();

                // A small publish from the watched connection while the alarm is on gets it blocked too.
                Wait.until("connection.blocked", () -> {
                    if (blocked.getCount() == 0) {
                        return true;
                    }
                    pch.basicPublish("", queue, null, "more".getBytes());
                    return false;
                });
                assertEquals(List.of("blocked: low on memory"), events);

                // Consuming everything clears the alarm.
                Channel dch = drainer.createChannel();
                AtomicInteger drained = new AtomicInteger();
                dch.basicConsume(queue, true, (tag, delivery) -> drained.incrementAndGet(), tag -> { });
                Wait.await(unblocked, "connection.unblocked");
                assertEquals(List.of("blocked: low on memory", "unblocked"), events);

                // The held-back publishes now go through and are consumed.
                fill.join(Wait.TIMEOUT.toMillis());
                assertTrue(!fill.isAlive() && !fillerFailed.get(), "the filler's publishes completed once unblocked (" + filled + "/20)");
                pch.basicPublish("", queue, null, "after".getBytes());
                Wait.until("all 20 MiB-messages and the small ones consumed",
                        () -> drained.get() >= 21 && pch.queueDeclarePassive(queue).getMessageCount() == 0);
            } finally {
                drainer.abort(10_000);
                filler.abort(10_000);
                pub.abort(10_000);
            }
        }
    }
}
