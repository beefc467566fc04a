package dev.warren.it.support;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/** Deadlines instead of sleeps: every wait in the suite polls or awaits with one of these. */
public final class Wait {
    /** Generous on purpose: CI is a loaded 2-core machine. */
    public static final Duration TIMEOUT = Duration.ofSeconds(30);

    private Wait() {
    }

    /** A probe may throw: an exception counts as "not yet" (and is reported if the deadline passes). */
    @FunctionalInterface
    public interface Probe<T> {
        T get() throws Exception;
    }

    /** Polls {@code probe} until it returns a non-null value other than FALSE; fails after the deadline. */
    public static <T> T until(String what, Duration timeout, Probe<T> probe) {
        long deadline = System.nanoTime() + timeout.toNanos();
        Throwable last = null;
        while (true) {
            try {
                T v = probe.get();
                if (v != null && !Boolean.FALSE.equals(v)) {
                    return v;
                }
            } catch (com.rabbitmq.client.ShutdownSignalException e) {
                throw new AssertionError("channel or connection closed while waiting for " + what, e);
            } catch (Exception | AssertionError e) {
                last = e;
            }
            if (System.nanoTime() > deadline) {
                AssertionError e = new AssertionError("timed out after " + timeout.toSeconds() + " s waiting for " + what);
                if (last != null) {
                    e.initCause(last);
                }
                throw e;
            }
            try {
                Thread.sleep(25); // poll interval, bounded by the deadline above
            } catch (InterruptedException ie) {
                Thread.currentThread().interrupt();
                throw new AssertionError("interrupted waiting for " + what, ie);
            }
        }
    }

    public static <T> T until(String what, Probe<T> probe) {
        return until(what, TIMEOUT, probe);
    }

    public static void await(CountDownLatch latch, String what) {
        try {
            assertTrue(latch.await(TIMEOUT.toMillis(), TimeUnit.MILLISECONDS),
                    "timed out waiting for " + what + " (" + latch.getCount() + " outstanding)");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            fail("interrupted waiting for " + what);
        }
    }

    public static <T> T get(CompletableFuture<T> f, String what) {
        try {
            return f.get(TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            throw new AssertionError("timed out waiting for " + what, e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new AssertionError("interrupted waiting for " + what, e);
        } catch (Exception e) {
            throw new AssertionError(what + " failed", e);
        }
    }
}
