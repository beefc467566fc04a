package integration

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The client closes channel 1 while the broker's channel.close for a publish to a missing
// exchange is on its way (amqp091-go's TestChannelExceptionWithCloseIssue43): channel 2 and
// the connection must be unaffected. Repeated, so both orders of the crossing closes occur.
func TestChannelCloseCrossingTheBrokers(t *testing.T) {
	url := startBroker(t)
	for i := 0; i < 50; i++ {
		conn, err := amqp.Dial(url)
		if err != nil {
			t.Fatal(err)
		}
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		c1, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		c2, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := c1.PublishWithContext(context.TODO(), "nonexisting-exchange", "", false, false, amqp.Publishing{}); err != nil {
			t.Fatal(err)
		}
		_ = c1.Close()
		if err := c2.ExchangeDeclare("test-channel-still-exists", "direct", false, true, false, false, nil); err != nil {
			t.Fatalf("round %d: channel 2 failed: %v", i, err)
		}
		select {
		case e := <-closed:
			t.Fatalf("round %d: connection closed: %v", i, e)
		default:
		}
		if err := conn.Close(); err != nil {
			t.Fatalf("round %d: close: %v", i, err)
		}
	}
}

// A channel exception reaches NotifyClose with RabbitMQ's code and text; the connection stays.
func TestChannelExceptionIsReportedWithRabbitMQsText(t *testing.T) {
	url := startBroker(t)
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	notify := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := ch.PublishWithContext(context.TODO(), "nonexisting-exchange", "", false, false, amqp.Publishing{}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-notify:
		if e.Code != 404 || e.Reason != "NOT_FOUND - no exchange 'nonexisting-exchange' in vhost '/'" {
			t.Fatalf("got %d %q", e.Code, e.Reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no channel close")
	}
	if conn.IsClosed() {
		t.Fatal("the connection was closed")
	}
}
