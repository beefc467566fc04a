package dev.warren.it.support;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.platform.engine.TestExecutionResult;
import org.junit.platform.launcher.TestExecutionListener;
import org.junit.platform.launcher.TestIdentifier;
import org.junit.platform.launcher.TestPlan;

/**
 * Prints one closing line, "java: N passed, N failed, N skipped", so that a quiet run (mvn -q,
 * where Surefire's own summary is not shown on success) still says how many tests ran.
 */
public final class SummaryListener implements TestExecutionListener {
    private final AtomicInteger passed = new AtomicInteger();
    private final AtomicInteger failed = new AtomicInteger();
    private final AtomicInteger skipped = new AtomicInteger();
    private final Set<String> counted = ConcurrentHashMap.newKeySet();
    private TestPlan plan;

    @Override
    public void testPlanExecutionStarted(TestPlan testPlan) {
        plan = testPlan;
    }

    @Override
    public void executionSkipped(TestIdentifier id, String reason) {
        skipped.addAndGet(uncountedTestsUnder(id));
    }

    @Override
    public void executionFinished(TestIdentifier id, TestExecutionResult result) {
        TestExecutionResult.Status status = result.getStatus();
        if (id.isTest()) {
            counted.add(id.getUniqueId());
            switch (status) {
                case SUCCESSFUL -> passed.incrementAndGet();
                case ABORTED -> skipped.incrementAndGet();
                default -> failed.incrementAndGet();
            }
        } else if (status == TestExecutionResult.Status.FAILED) {
            failed.incrementAndGet(); // e.g. @BeforeAll failed: its tests never ran
        } else if (status == TestExecutionResult.Status.ABORTED) {
            skipped.addAndGet(uncountedTestsUnder(id)); // e.g. an assumption in @BeforeAll
        }
    }

    private int uncountedTestsUnder(TestIdentifier id) {
        if (id.isTest()) {
            return counted.add(id.getUniqueId()) ? 1 : 0;
        }
        if (plan == null) {
            return 0;
        }
        return (int) plan.getDescendants(id).stream()
                .filter(t -> t.isTest() && counted.add(t.getUniqueId()))
                .count();
    }

    @Override
    public void testPlanExecutionFinished(TestPlan testPlan) {
        // A newline first: Maven may have left colour codes at the start of the current line.
        System.out.println(System.lineSeparator() + "java: " + passed + " passed, " + failed + " failed, " + skipped + " skipped");
    }
}
