package dev.warren.it.support;

import com.rabbitmq.client.ConnectionFactory;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * The broker under test: a Warren process started by the test (one per test class, on ephemeral
 * ports), or, when the environment variable AMQP_URL is set, an external broker such as a reference
 * RabbitMQ (then MANAGEMENT_URL, default http://HOST:15672, names its management API).
 */
public final class Broker implements AutoCloseable {
    private static final Pattern LISTENING =
            Pattern.compile("(AMQPS \\(AMQP 0-9-1 over TLS\\) )?connections on 127\\.0\\.0\\.1:(\\d+)");
    private static final Pattern MANAGEMENT =
            Pattern.compile("management API listening on http://127\\.0\\.0\\.1:(\\d+)/");
    private static final int KEEP_LOG_LINES = 400;

    /** What a Warren process needs: a config file, a data directory (else --in-memory), AMQPS. */
    public static final class Options {
        String config;
        boolean durable;
        boolean amqps;

        public Options config(String toml) {
            this.config = toml;
            return this;
        }

        /** Keep state in a data directory (so it survives a restart) instead of --in-memory. */
        public Options durable() {
            this.durable = true;
            return this;
        }

        /** Wait for the AMQPS listener too (the config enables it). */
        public Options amqps() {
            this.amqps = true;
            return this;
        }
    }

    private final boolean external;
    private final String host;
    private final String user;
    private final String password;
    private final String vhost;
    private final Options options;
    private Path tempDir;
    private volatile Process process;
    private int port;
    private int amqpsPort = -1;
    private int mgmtPort = -1;
    private String externalMgmtUrl;
    private final List<String> log = new ArrayList<>();

    private Broker(boolean external, String host, String user, String password, String vhost, Options options) {
        this.external = external;
        this.host = host;
        this.user = user;
        this.password = password;
        this.vhost = vhost;
        this.options = options;
    }

    /** True when AMQP_URL points the suite at an external broker. */
    public static boolean isExternal() {
        String url = System.getenv("AMQP_URL");
        return url != null && !url.isBlank();
    }

    /** The broker for a test class: the external one, or a new in-memory Warren. */
    public static Broker start() {
        return isExternal() ? fromAmqpUrl() : startWarren(new Options());
    }

    private static Broker fromAmqpUrl() {
        URI uri = URI.create(System.getenv("AMQP_URL").trim());
        String user = "guest";
        String password = "guest";
        if (uri.getRawUserInfo() != null) {
            String[] up = uri.getRawUserInfo().split(":", 2);
            user = URLDecoder.decode(up[0], StandardCharsets.UTF_8);
            password = up.length > 1 ? URLDecoder.decode(up[1], StandardCharsets.UTF_8) : "";
        }
        String path = uri.getRawPath();
        String vhost = path == null || path.isEmpty() || path.equals("/") ? "/" : URLDecoder.decode(path.substring(1), StandardCharsets.UTF_8);
        Broker b = new Broker(true, uri.getHost(), user, password, vhost, new Options());
        b.port = uri.getPort() == -1 ? 5672 : uri.getPort();
        String mgmt = System.getenv("MANAGEMENT_URL");
        b.externalMgmtUrl = mgmt != null && !mgmt.isBlank() ? mgmt.trim() : "http://" + uri.getHost() + ":15672";
        return b;
    }

    /** A Warren process with these options (callers skip first when the suite runs against an external broker). */
    public static Broker startWarren(Options options) {
        Broker b = new Broker(false, "127.0.0.1", "guest", "guest", "/", options);
        try {
            b.tempDir = Files.createTempDirectory("warren-java-it-");
            b.launch(0);
            return b;
        } catch (IOException e) {
            b.close();
            throw new RuntimeException(e);
        } catch (RuntimeException | Error e) {
            b.close();
            throw e;
        }
    }

    public static Path warrenBinary() {
        return binary("WARREN_BIN", "../../target/release/warren");
    }

    static Path binary(String env, String fallback) {
        String p = System.getenv(env);
        Path path = Paths.get(p != null && !p.isBlank() ? p : fallback).toAbsolutePath().normalize();
        if (!Files.isExecutable(path)) {
            throw new IllegalStateException(env + ": no executable at " + path);
        }
        return path;
    }

    private void launch(int fixedPort) throws IOException {
        List<String> cmd = new ArrayList<>(List.of(warrenBinary().toString(),
                "--bind", "127.0.0.1", "--port", Integer.toString(fixedPort),
                "--log-level", "info", "--management-port", "0"));
        if (options.durable) {
            cmd.add("--data-dir");
            cmd.add(tempDir.resolve("data").toString());
        } else {
            cmd.add("--in-memory");
        }
        if (options.config != null) {
            Path cfg = tempDir.resolve("broker.toml");
            Files.writeString(cfg, options.config);
            cmd.add("--config");
            cmd.add(cfg.toString());
        }
        long deadline = System.nanoTime() + Wait.TIMEOUT.toNanos();
        while (true) {
            if (tryLaunch(cmd, deadline)) {
                return;
            }
            // Restarting on a fixed port can race the previous process's socket teardown: try again.
            if (fixedPort == 0 || System.nanoTime() > deadline) {
                throw new IllegalStateException("warren did not start: " + String.join(" ", cmd) + "\n" + logText());
            }
            try {
                Thread.sleep(100); // between attempts, within the deadline above
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted starting warren");
            }
        }
    }

    private boolean tryLaunch(List<String> cmd, long deadline) throws IOException {
        synchronized (log) {
            log.clear();
            port = -1;
            amqpsPort = -1;
            mgmtPort = -1;
        }
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        // Nothing from the caller's environment may reconfigure the broker under test.
        Map<String, String> env = pb.environment();
        env.keySet().removeIf(k -> k.startsWith("WARREN_") || k.startsWith("RABBITMQ_"));
        Process p = pb.start();
        process = p;
        Thread pump = new Thread(() -> drain(p), "warren-log");
        pump.setDaemon(true);
        pump.start();
        synchronized (log) {
            while (!(port > 0 && mgmtPort > 0 && (!options.amqps || amqpsPort > 0))) {
                long left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
                if (!p.isAlive() || left <= 0) {
                    break;
                }
                try {
                    log.wait(Math.min(left, 200));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    break;
                }
            }
            if (port > 0 && mgmtPort > 0 && (!options.amqps || amqpsPort > 0)) {
                return true;
            }
        }
        p.destroyForcibly();
        waitFor(p);
        return false;
    }

    private void drain(Process p) {
        try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
            String line;
            while ((line = r.readLine()) != null) {
                synchronized (log) {
                    if (log.size() >= KEEP_LOG_LINES) {
                        log.remove(0);
                    }
                    log.add(line);
                    if (System.getenv("WARREN_IT_LOG") != null) {
                        System.err.println("[warren] " + line);
                    }
                    if (p != process) {
                        continue; // the tail of a process that was already stopped
                    }
                    Matcher m = LISTENING.matcher(line);
                    if (m.find()) {
                        if (m.group(1) != null) {
                            amqpsPort = Integer.parseInt(m.group(2));
                        } else {
                            port = Integer.parseInt(m.group(2));
                        }
                    }
                    Matcher mm = MANAGEMENT.matcher(line);
                    if (mm.find()) {
                        mgmtPort = Integer.parseInt(mm.group(1));
                    }
                    log.notifyAll();
                }
            }
        } catch (IOException ignored) {
            // the process is gone
        }
        synchronized (log) {
            log.notifyAll();
        }
    }

    public String logText() {
        synchronized (log) {
            return String.join("\n", log);
        }
    }

    public boolean external() {
        return external;
    }

    public String host() {
        return host;
    }

    public int port() {
        return port;
    }

    public int amqpsPort() {
        return amqpsPort;
    }

    public String user() {
        return user;
    }

    public String password() {
        return password;
    }

    public String vhost() {
        return vhost;
    }

    public Path tempDir() {
        return tempDir;
    }

    /** A ConnectionFactory for this broker, automatic recovery off (tests that want it turn it on). */
    public ConnectionFactory factory() {
        ConnectionFactory f = new ConnectionFactory();
        f.setHost(host);
        f.setPort(port);
        f.setUsername(user);
        f.setPassword(password);
        f.setVirtualHost(vhost);
        f.setAutomaticRecoveryEnabled(false);
        f.setConnectionTimeout((int) Wait.TIMEOUT.toMillis());
        f.setHandshakeTimeout((int) Wait.TIMEOUT.toMillis());
        f.setChannelRpcTimeout((int) Wait.TIMEOUT.toMillis());
        return f;
    }

    public Mgmt mgmt() {
        String url = external ? externalMgmtUrl : "http://127.0.0.1:" + mgmtPort;
        return new Mgmt(url, user, password);
    }

    /** SIGTERM, then wait for the process to exit. */
    public int stop() {
        return end(false);
    }

    /** SIGKILL (kill -9), then wait for the process to exit. */
    public int kill() {
        return end(true);
    }

    private int end(boolean forcibly) {
        if (external) {
            throw new IllegalStateException("the external broker is never stopped by the suite");
        }
        Process p = process;
        if (p == null) {
            return -1;
        }
        // Signal through the ProcessHandle: Process.destroy() would also close our ends of the
        // process's pipes at once, and Warren's shutdown log lines would then hit EPIPE (it exits 101).
        if (forcibly) {
            p.toHandle().destroyForcibly(); // SIGKILL
        } else {
            p.toHandle().destroy(); // SIGTERM
        }
        return waitFor(p);
    }

    private static int waitFor(Process p) {
        try {
            if (!p.waitFor(Wait.TIMEOUT.toMillis(), TimeUnit.MILLISECONDS)) {
                p.destroyForcibly();
                p.waitFor(10, TimeUnit.SECONDS);
                throw new IllegalStateException("warren did not exit within " + Wait.TIMEOUT.toSeconds() + " s of SIGTERM");
            }
            return p.exitValue();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            p.destroyForcibly();
            return -1;
        }
    }

    /** Start again on the same AMQP port with the same data directory (after stop() or kill()). */
    public void restart() {
        if (process != null && process.isAlive()) {
            stop();
        }
        int samePort = port;
        try {
            launch(samePort);
        } catch (IOException e) {
            throw new RuntimeException(e);
        }
        if (port != samePort) {
            throw new IllegalStateException("restarted on port " + port + ", expected " + samePort);
        }
    }

    @Override
    public void close() {
        if (!external && process != null && process.isAlive()) {
            try {
                stop();
            } catch (RuntimeException ignored) {
                process.destroyForcibly();
            }
        }
        if (tempDir != null) {
            deleteTree(tempDir);
            tempDir = null;
        }
    }

    public static void deleteTree(Path dir) {
        if (dir == null || !Files.exists(dir)) {
            return;
        }
        try (Stream<Path> walk = Files.walk(dir)) {
            walk.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        } catch (IOException ignored) {
            // best effort
        }
    }

    /** How long a test may wait for anything. */
    public static Duration timeout() {
        return Wait.TIMEOUT;
    }
}
