package dev.warren.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultSaslConfig;
import com.rabbitmq.client.GetResponse;
import dev.warren.it.support.Broker;
import dev.warren.it.support.Pem;
import dev.warren.it.support.Wait;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.SSLContext;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** 8. AMQPS: password login with the CA trusted, and EXTERNAL with a client certificate (Warren only: needs its config). */
class TlsTest {
    static Path certs;
    static Broker broker;

    @BeforeAll
    static void start() throws Exception {
        assumeFalse(Broker.isExternal(), "needs a broker started with the generated certificates");
        certs = Files.createTempDirectory("warren-java-certs-");
        String env = System.getenv("WARREN_TEST_CERTS_BIN");
        Path tool = Path.of(env != null && !env.isBlank() ? env : "../../target/release/examples/test_certs").toAbsolutePath().normalize();
        Process p = new ProcessBuilder(tool.toString(), certs.toString(), "tls-user").inheritIO().start();
        assertTrue(p.waitFor(Wait.TIMEOUT.toMillis(), TimeUnit.MILLISECONDS), "test_certs finished");
        assertEquals(0, p.exitValue(), "test_certs exit code");
        String config = "[amqps]\nenabled = true\nbind = \"127.0.0.1\"\nport = 0\n\n"
                + "[tls]\ncert_file = \"" + certs.resolve("server.pem") + "\"\n"
                + "key_file = \"" + certs.resolve("server.key") + "\"\n"
                + "ca_file = \"" + certs.resolve("ca.pem") + "\"\nverify_peer = true\n\n"
                + "[[users]]\nname = \"guest\"\npassword = \"guest\"\ntags = [\"administrator\"]\n\n"
                + "[[users]]\nname = \"tls-user\"\nvhosts = [\"*\"]\n";
        broker = Broker.startWarren(new Broker.Options().config(config).amqps());
    }

    @AfterAll
    static void stop() {
        if (broker != null) {
            broker.close();
        }
        Broker.deleteTree(certs);
    }

    ConnectionFactory tlsFactory(SSLContext ctx) {
        ConnectionFactory f = broker.factory();
        f.setHost("localhost");
        f.setPort(broker.amqpsPort());
        f.useSslProtocol(ctx);
        f.enableHostnameVerification();
        return f;
    }

    /** Publish with user_id (the broker checks it against the authenticated user) and read it back. */
    static void roundTrip(Connection c, String userId) throws Exception {
        Channel ch = c.createChannel();
        String q = ch.queueDeclare().getQueue();
        AMQP.BasicProperties props = new AMQP.BasicProperties.Builder().userId(userId).build();
        ch.basicPublish("", q, props, "over tls".getBytes(StandardCharsets.UTF_8));
        GetResponse r = Wait.until("the message over TLS", () -> ch.basicGet(q, true));
        assertEquals("over tls", new String(r.getBody(), StandardCharsets.UTF_8));
        assertEquals(userId, r.getProps().getUserId());
        ch.close();
    }

    @Test
    void passwordLoginWithTrustedCa() throws Exception {
        SSLContext ctx = Pem.context(certs.resolve("ca.pem"), null, null);
        try (Connection c = tlsFactory(ctx).newConnection("tls-password")) {
            roundTrip(c, "guest");
        }
    }

    @Test
    void externalLoginWithClientCertificate() throws Exception {
        SSLContext ctx = Pem.context(certs.resolve("ca.pem"), certs.resolve("client.pem"), certs.resolve("client.key"));
        ConnectionFactory f = tlsFactory(ctx);
        f.setSaslConfig(DefaultSaslConfig.EXTERNAL);
        f.setUsername("ignored-by-external");
        f.setPassword("ignored-by-external");
        try (Connection c = f.newConnection("tls-external")) {
            roundTrip(c, "tls-user"); // the certificate's CN is the user
        }
    }

    @Test
    void externalWithoutCertificateIsRefused() throws Exception {
        SSLContext ctx = Pem.context(certs.resolve("ca.pem"), null, null);
        ConnectionFactory f = tlsFactory(ctx);
        f.setSaslConfig(DefaultSaslConfig.EXTERNAL);
        // Without a peer certificate the broker does not offer EXTERNAL (as RabbitMQ's rabbitmq_auth_mechanism_ssl).
        IOException e = assertThrows(IOException.class, () -> f.newConnection("tls-external-nocert").close());
        assertTrue(e.getMessage().startsWith("No compatible authentication mechanism found"), e.toString());
        assertFalse(e.getMessage().contains("EXTERNAL"), e.toString());
    }

    @Test
    void untrustedClientCertificateIsRefused() throws Exception {
        SSLContext ctx = Pem.context(certs.resolve("ca.pem"), certs.resolve("untrusted.pem"), certs.resolve("untrusted.key"));
        ConnectionFactory f = tlsFactory(ctx);
        assertThrows(IOException.class, () -> f.newConnection("tls-untrusted").close());
        // and the listener serves on
        try (Connection c = tlsFactory(Pem.context(certs.resolve("ca.pem"), null, null)).newConnection("tls-after")) {
            roundTrip(c, "guest");
        }
    }
}
