package dev.warren.it.support;

import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;

/** Unique queue and exchange names for one test, deleted afterwards (the reference broker is shared). */
public final class Names implements AutoCloseable {
    private final Broker broker;
    private final List<String> queues = new ArrayList<>();
    private final List<String> exchanges = new ArrayList<>();

    public Names(Broker broker) {
        this.broker = broker;
    }

    public static String unique(String hint) {
        return "it-java-" + hint + "-" + UUID.randomUUID().toString().substring(0, 8);
    }

    public synchronized String queue(String hint) {
        String n = unique(hint);
        queues.add(n);
        return n;
    }

    public synchronized String exchange(String hint) {
        String n = unique(hint);
        exchanges.add(n);
        return n;
    }

    /** Deletes everything named here; best effort (the broker may be gone). */
    @Override
    public synchronized void close() {
        if (queues.isEmpty() && exchanges.isEmpty()) {
            return;
        }
        try (Connection c = broker.factory().newConnection("it-java-cleanup")) {
            for (String q : queues) {
                try (Channel ch = c.createChannel()) {
                    ch.queueDelete(q);
                } catch (Exception ignored) {
                    // already gone
                }
            }
            for (String x : exchanges) {
                try (Channel ch = c.createChannel()) {
                    ch.exchangeDelete(x);
                } catch (Exception ignored) {
                    // already gone
                }
            }
        } catch (Exception ignored) {
            // the broker is not there any more
        }
        queues.clear();
        exchanges.clear();
    }
}
