package integration

// What needs a Warren of its own: the memory alarm (NotifyBlocked), the consumer timeout,
// TLS, durable messages over a restart and a kill -9, and a service reconnecting after the
// broker restarts.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "broker.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestNotifyBlockedUnderTheMemoryAlarm(t *testing.T) {
	warrenOnly(t, "a memory watermark in its config")
	b := launch(t, "", writeConfig(t, "[memory]\nhigh_watermark_bytes = 16777216\n"))
	publisher := dial(t, b.URL())
	blocked := publisher.NotifyBlocked(make(chan amqp.Blocking, 2))
	ch := channel(t, publisher)
	q := name(t, "q")
	if _, err := ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	// 24 MiB from another connection with nobody consuming: past the 16 MiB watermark. The
	// alarm is checked every 100 ms, and RabbitMQ blocks a connection when it publishes while
	// the alarm is on: this one keeps publishing small messages until it is told.
	filler := channel(t, dial(t, b.URL()))
	body := make([]byte, 1<<20)
	go func() {
		for i := 0; i < 24; i++ {
			if filler.PublishWithContext(context.Background(), "", q, false, false, amqp.Publishing{Body: body}) != nil {
				return
			}
		}
	}()
	got := make(chan amqp.Blocking, 1)
	go func() {
		deadline := time.Now().Add(wait)
		for time.Now().Before(deadline) {
			select {
			case b := <-blocked:
				got <- b
				return
			case <-time.After(50 * time.Millisecond):
				// Once blocked, the broker stops reading this connection: the publish may
				// stall, and the notification still arrives on the reader.
				go func() {
					_ = ch.PublishWithContext(context.Background(), "", q, false, false, amqp.Publishing{Body: []byte("more")})
				}()
			}
		}
		close(got)
	}()
	select {
	case b, ok := <-got:
		if !ok || !b.Active || b.Reason != "low on memory" {
			t.Fatalf("blocked %+v (received %v)", b, ok)
		}
	case <-time.After(wait + time.Second):
		t.Fatal("no connection.blocked")
	}
	// Another connection that only consumes is not blocked: purging clears the alarm.
	other := channel(t, dial(t, b.URL()))
	if _, err := other.QueuePurge(q, false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for {
		select {
		case b := <-blocked:
			if b.Active {
				t.Fatalf("blocked again %+v", b)
			}
			return
		case <-time.After(100 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no connection.unblocked")
			}
			// The publisher may have queued more past the watermark after the purge.
			if _, err := other.QueuePurge(q, false); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// x-consumer-timeout (RabbitMQ 3.12+): an unacked delivery past it closes the channel with
// 406, and the message comes back, redelivered, to the next consumer.
func TestConsumerTimeoutClosesTheChannelAndRedelivers(t *testing.T) {
	warrenOnly(t, "x-consumer-timeout is RabbitMQ 3.12+; the reference is 3.10")
	url := startBroker(t)
	conn := dial(t, url)
	ch := channel(t, conn)
	q := name(t, "q")
	if _, err := ch.QueueDeclare(q, false, false, false, false, amqp.Table{"x-consumer-timeout": int32(500)}); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, "", q, 1)
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-deliveries
	select {
	case e := <-closed:
		want := "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 500 ms. " +
			"This timeout value can be configured, see consumers doc guide to learn more"
		if e == nil || e.Code != 406 || e.Reason != want {
			t.Fatalf("close %+v", e)
		}
	case <-time.After(wait):
		t.Fatal("the channel was not closed")
	}
	ch2 := channel(t, conn)
	d, ok, err := ch2.Get(q, true)
	if err != nil || !ok || !d.Redelivered || string(d.Body) != "message 0" {
		t.Fatalf("after the timeout: ok=%v err=%v %+v", ok, err, d)
	}
}

func TestTLSWithPasswordAndWithAClientCertificate(t *testing.T) {
	warrenOnly(t, "a TLS listener in its config")
	bin := os.Getenv("WARREN_TEST_CERTS_BIN")
	if bin == "" {
		bin, _ = filepath.Abs("../../target/release/examples/test_certs")
	}
	certs := t.TempDir()
	if out, err := exec.Command(bin, certs).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v %s", bin, err, out)
	}
	b := launch(t, "", writeConfig(t, fmt.Sprintf(`
[amqps]
enabled = true
bind = "127.0.0.1"
port = 0

[tls]
cert_file = "%[1]s/server.pem"
key_file = "%[1]s/server.key"
ca_file = "%[1]s/ca.pem"
verify_peer = true

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]

[[users]]
name = "tls-user"
vhosts = ["*"]
`, certs)))
	roots := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(certs, "ca.pem"))
	if err != nil || !roots.AppendCertsFromPEM(ca) {
		t.Fatalf("ca.pem: %v", err)
	}
	roundTrip := func(conn *amqp.Connection) {
		ch := channel(t, conn)
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		publishConfirmed(t, ch, "", q.Name, 1)
		if d, ok, err := ch.Get(q.Name, true); err != nil || !ok || string(d.Body) != "message 0" {
			t.Fatalf("get over TLS: %v %v", ok, err)
		}
	}

	// A password login over TLS, the server verified against the test CA. Verify_peer asks for
	// a client certificate; this client sends none and the server accepts that
	// (fail_if_no_peer_cert is off).
	conn, err := amqp.DialTLS(fmt.Sprintf("amqps://guest:guest@localhost:%s/", b.tlsPort), &tls.Config{RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(conn)
	conn.Close()

	// EXTERNAL: the client certificate's common name is the user.
	cert, err := tls.LoadX509KeyPair(filepath.Join(certs, "client.pem"), filepath.Join(certs, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err = amqp.DialTLS_ExternalAuth(fmt.Sprintf("amqps://localhost:%s/", b.tlsPort),
		&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(conn)
	conn.Close()

	// An untrusted client certificate fails the handshake.
	bad, err := tls.LoadX509KeyPair(filepath.Join(certs, "untrusted.pem"), filepath.Join(certs, "untrusted.key"))
	if err != nil {
		t.Fatal(err)
	}
	if conn, err := amqp.DialTLS_ExternalAuth(fmt.Sprintf("amqps://localhost:%s/", b.tlsPort),
		&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{bad}}); err == nil {
		conn.Close()
		t.Fatal("an untrusted client certificate was accepted")
	}
}

// Confirmed persistent messages in a durable queue are all there after an orderly restart and
// after a kill -9.
func TestConfirmedMessagesSurviveRestartAndKill(t *testing.T) {
	warrenOnly(t, "restarts the broker")
	b := launch(t, t.TempDir(), "")
	q := name(t, "q")
	total := 0
	for round, kill := range []bool{false, true} {
		conn, err := amqp.Dial(b.URL())
		if err != nil {
			t.Fatal(err)
		}
		ch := channel(t, conn)
		if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		publishConfirmed(t, ch, "", q, 500)
		total += 500
		b.restart(kill)
		conn, err = amqp.Dial(b.URL())
		if err != nil {
			t.Fatal(err)
		}
		st, err := channel(t, conn).QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil || st.Messages != total {
			t.Fatalf("round %d (kill %v): %+v %v", round, kill, st, err)
		}
		conn.Close()
	}
}

// The reconnect loop a Go service needs (amqp091-go does not reconnect by itself): the
// broker's shutdown reaches NotifyClose as 320 CONNECTION_FORCED; the service redials until the
// broker is back, declares its topology again and consumes what was confirmed before.
func TestServiceReconnectsAfterTheBrokerRestarts(t *testing.T) {
	warrenOnly(t, "restarts the broker")
	b := launch(t, t.TempDir(), "")
	q := name(t, "q")
	conn := dial(t, b.URL())
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	pub := channel(t, conn)
	if _, err := pub.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, pub, "", q, 10)

	b.stop(false)
	select {
	case e := <-closed:
		if e == nil || e.Code != 320 || e.Reason != "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'" {
			t.Fatalf("NotifyClose %+v", e)
		}
	case <-time.After(wait):
		t.Fatal("no connection.close on shutdown")
	}
	// The service redials from the moment it sees the close, while the broker is still down.
	url := b.URL()
	redialed := make(chan *amqp.Connection, 1)
	go func() {
		deadline := time.Now().Add(wait)
		for time.Now().Before(deadline) {
			if conn, err := amqp.Dial(url); err == nil {
				redialed <- conn
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		close(redialed)
	}()
	b.start()
	conn, ok := <-redialed
	if !ok {
		t.Fatal("no reconnect within the deadline")
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch := channel(t, conn)
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		select {
		case d := <-deliveries:
			if d.MessageId != fmt.Sprint(i) || d.Redelivered {
				t.Fatalf("delivery %d: %s redelivered=%v", i, d.MessageId, d.Redelivered)
			}
			if err := d.Ack(false); err != nil {
				t.Fatal(err)
			}
		case <-time.After(wait):
			t.Fatalf("delivery %d missing", i)
		}
	}
}
