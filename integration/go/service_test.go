package integration

// What a Go service does with amqp091-go: topology, publishing with deferred confirms,
// consuming with manual acks and prefetch, and the Notify* channels for returns, cancels,
// channel errors and dead letters. Each asserts RabbitMQ's codes, texts and header types;
// `AMQP_URL=amqp://guest:guest@127.0.0.1:5680/ go test ./...` runs them against RabbitMQ.

import (
	"context"
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const wait = 30 * time.Second

func dial(t *testing.T, url string) *amqp.Connection {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func channel(t *testing.T, conn *amqp.Connection) *amqp.Channel {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// name gives each test its own queue and exchange names, so runs against a shared external
// broker do not collide.
func name(t *testing.T, what string) string {
	return fmt.Sprintf("go.%s.%s.%d", t.Name(), what, time.Now().UnixNano())
}

// publishConfirmed publishes n persistent messages with deferred confirms and waits for all.
func publishConfirmed(t *testing.T, ch *amqp.Channel, exchange, key string, n int) {
	t.Helper()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	confirms := make([]*amqp.DeferredConfirmation, 0, n)
	for i := 0; i < n; i++ {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, false, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			ContentType:  "text/plain",
			MessageId:    fmt.Sprint(i),
			Body:         []byte(fmt.Sprintf("message %d", i)),
		})
		if err != nil {
			t.Fatal(err)
		}
		confirms = append(confirms, dc)
	}
	for i, dc := range confirms {
		acked, err := dc.WaitContext(ctx)
		if err != nil || !acked {
			t.Fatalf("confirm %d: acked=%v err=%v", i, acked, err)
		}
	}
}

func TestTopologyDeferredConfirmsAndManualAckWithPrefetch(t *testing.T) {
	url := startBroker(t)
	conn := dial(t, url)
	ch := channel(t, conn)
	ex, q := name(t, "x"), name(t, "q")
	if err := ch.ExchangeDeclare(ex, "direct", true, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, true, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q, "orders", ex, false, nil); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	publishConfirmed(t, ch, ex, "orders", n)
	if st, err := ch.QueueDeclarePassive(q, true, true, false, false, nil); err != nil || st.Messages != n {
		t.Fatalf("queue state %+v, %v", st, err)
	}

	cch := channel(t, conn)
	if err := cch.Qos(50, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := cch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		select {
		case d := <-deliveries:
			if d.MessageId != fmt.Sprint(i) || d.Redelivered || d.DeliveryMode != amqp.Persistent ||
				d.ContentType != "text/plain" || d.Exchange != ex || d.RoutingKey != "orders" {
				t.Fatalf("delivery %d: %+v", i, d)
			}
			if err := d.Ack(false); err != nil {
				t.Fatal(err)
			}
		case <-time.After(wait):
			t.Fatalf("only %d of %d delivered", i, n)
		}
	}
	// Every message was acked: the queue is empty once the acks are processed (a passive
	// declare on the same channel comes after them).
	if st, err := cch.QueueDeclarePassive(q, true, true, false, false, nil); err != nil || st.Messages != 0 || st.Consumers != 1 {
		t.Fatalf("queue state after acks %+v, %v", st, err)
	}
}

// Prefetch bounds what a consumer holds: with Qos(5) and nothing acked, five deliveries arrive;
// the sixth comes only after an ack.
func TestPrefetchBoundsUnackedDeliveries(t *testing.T) {
	url := startBroker(t)
	conn := dial(t, url)
	ch := channel(t, conn)
	q := name(t, "q")
	if _, err := ch.QueueDeclare(q, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, "", q, 20)
	if err := ch.Qos(5, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var held []amqp.Delivery
	for len(held) < 5 {
		select {
		case d := <-deliveries:
			held = append(held, d)
		case <-time.After(wait):
			t.Fatalf("%d deliveries", len(held))
		}
	}
	// The broker's count: 15 ready, 5 unacked (a passive declare reports ready messages).
	if st, err := ch.QueueDeclarePassive(q, false, true, false, false, nil); err != nil || st.Messages != 15 {
		t.Fatalf("ready %+v, %v", st, err)
	}
	select {
	case d := <-deliveries:
		t.Fatalf("a sixth delivery past prefetch 5: %s", d.MessageId)
	default:
	}
	if err := held[0].Ack(false); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-deliveries:
		if d.MessageId != "5" {
			t.Fatalf("next delivery %s", d.MessageId)
		}
	case <-time.After(wait):
		t.Fatal("no delivery after the ack")
	}
}

func TestNotifyReturnForUnroutableMandatory(t *testing.T) {
	url := startBroker(t)
	ch := channel(t, dial(t, url))
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	ex := name(t, "x")
	if err := ch.ExchangeDeclare(ex, "direct", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	err := ch.PublishWithContext(context.Background(), ex, "nowhere", true, false, amqp.Publishing{
		Body: []byte("lost"), Headers: amqp.Table{"attempt": int32(1)},
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-returns:
		if r.ReplyCode != 312 || r.ReplyText != "NO_ROUTE" || r.Exchange != ex || r.RoutingKey != "nowhere" ||
			string(r.Body) != "lost" || r.Headers["attempt"] != int32(1) {
			t.Fatalf("return %+v", r)
		}
	case <-time.After(wait):
		t.Fatal("no basic.return")
	}
}

func TestNotifyCancelWhenTheQueueIsDeleted(t *testing.T) {
	url := startBroker(t)
	conn := dial(t, url)
	ch := channel(t, conn)
	q := name(t, "q")
	if _, err := ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	cancels := ch.NotifyCancel(make(chan string, 1))
	deliveries, err := ch.Consume(q, "go-consumer", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := channel(t, conn)
	if _, err := other.QueueDelete(q, false, false, false); err != nil {
		t.Fatal(err)
	}
	select {
	case tag := <-cancels:
		if tag != "go-consumer" {
			t.Fatalf("cancelled %q", tag)
		}
	case <-time.After(wait):
		t.Fatal("no basic.cancel")
	}
	select {
	case _, open := <-deliveries:
		if open {
			t.Fatal("a delivery after the cancel")
		}
	case <-time.After(wait):
		t.Fatal("the deliveries channel stayed open")
	}
	// The channel itself is still usable.
	if _, err := ch.QueueDeclare("", false, true, true, false, nil); err != nil {
		t.Fatal(err)
	}
}

func TestChannelErrorsReachNotifyClose(t *testing.T) {
	url := startBroker(t)
	conn := dial(t, url)
	q := name(t, "q")
	cases := []struct {
		do   func(ch *amqp.Channel) error
		code int
		text string
	}{
		{func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
			return err
		}, 404, fmt.Sprintf("NOT_FOUND - no queue '%s' in vhost '/'", q)},
		{func(ch *amqp.Channel) error {
			if _, err := ch.QueueDeclare(q, false, true, false, false, nil); err != nil {
				return err
			}
			_, err := ch.QueueDeclare(q, true, true, false, false, nil)
			return err
		}, 406, fmt.Sprintf("PRECONDITION_FAILED - inequivalent arg 'durable' for queue '%s' in vhost '/': received 'true' but current is 'false'", q)},
		{func(ch *amqp.Channel) error {
			return ch.Ack(99, false)
		}, 406, "PRECONDITION_FAILED - unknown delivery tag 99"},
		{func(ch *amqp.Channel) error {
			return ch.ExchangeDeclare("amq.go-reserved", "direct", false, false, false, false, nil)
		}, 403, "ACCESS_REFUSED - exchange name 'amq.go-reserved' contains reserved prefix 'amq.*'"},
	}
	for i, c := range cases {
		ch := channel(t, conn)
		closed := ch.NotifyClose(make(chan *amqp.Error, 1))
		_ = c.do(ch)
		select {
		case e := <-closed:
			if e == nil || e.Code != c.code || e.Reason != c.text || !e.Server || !e.Recover {
				t.Fatalf("case %d: %+v", i, e)
			}
		case <-time.After(wait):
			t.Fatalf("case %d: no channel.close", i)
		}
		if conn.IsClosed() {
			t.Fatalf("case %d: the connection was closed", i)
		}
	}
}

// Reject without requeue into a dead-letter exchange: the DLQ's message carries x-death as
// amqp091-go decodes RabbitMQ's: a []interface{} of amqp.Table with int64 count, time.Time
// time and []interface{} routing-keys.
func TestRejectIntoDeadLetterExchangeWithXDeath(t *testing.T) {
	url := startBroker(t)
	ch := channel(t, dial(t, url))
	dlx, dlq, q := name(t, "dlx"), name(t, "dlq"), name(t, "work")
	if err := ch.ExchangeDeclare(dlx, "fanout", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(dlq, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(dlq, "", dlx, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, false, true, false, false, amqp.Table{"x-dead-letter-exchange": dlx}); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-2 * time.Second).Truncate(time.Second)
	publishConfirmed(t, ch, "", q, 1)
	d, ok, err := ch.Get(q, false)
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	if err := d.Reject(false); err != nil {
		t.Fatal(err)
	}
	var dead amqp.Delivery
	deadline := time.Now().Add(wait)
	for {
		dead, ok, err = ch.Get(dlq, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !ok {
		t.Fatal("nothing dead-lettered")
	}
	if dead.Exchange != dlx || dead.RoutingKey != q || string(dead.Body) != "message 0" {
		t.Fatalf("dead letter %+v", dead)
	}
	deaths, isList := dead.Headers["x-death"].([]interface{})
	if !isList || len(deaths) != 1 {
		t.Fatalf("x-death %#v", dead.Headers["x-death"])
	}
	death, isTable := deaths[0].(amqp.Table)
	if !isTable {
		t.Fatalf("x-death[0] %#v", deaths[0])
	}
	if death["count"] != int64(1) || death["reason"] != "rejected" || death["queue"] != q || death["exchange"] != "" {
		t.Fatalf("x-death[0] %#v", death)
	}
	keys, _ := death["routing-keys"].([]interface{})
	if len(keys) != 1 || keys[0] != q {
		t.Fatalf("routing-keys %#v", death["routing-keys"])
	}
	when, isTime := death["time"].(time.Time)
	if !isTime || when.Before(before) || when.After(time.Now().Add(2*time.Second)) {
		t.Fatalf("time %#v", death["time"])
	}
	for k, want := range map[string]string{"x-first-death-reason": "rejected", "x-first-death-queue": q, "x-first-death-exchange": ""} {
		if dead.Headers[k] != want {
			t.Fatalf("%s = %#v", k, dead.Headers[k])
		}
	}
}
