// goperf: an independent load generator (RabbitMQ's official Go client, amqp091-go) to check
// figures that warren-perf produces. One publisher and one autoack consumer on a fresh queue
// for -duration; prints JSON with messages sent and received. Broker CPU is measured outside
// (bench/permission_cost.sh reads /proc/PID/stat around the run).
//
//	go run . -uri amqp://guest:guest@127.0.0.1:5672/ -duration 10s -size 16
package main

import (
	"encoding/json"
	"flag"
	"log"
	"os"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func main() {
	uri := flag.String("uri", "amqp://guest:guest@127.0.0.1:5672/", "broker URI")
	duration := flag.Duration("duration", 10*time.Second, "publishing time")
	size := flag.Int("size", 16, "body size in bytes")
	queue := flag.String("queue", "goperf", "queue name (declared, deleted at the end)")
	flag.Parse()

	pubConn, err := amqp.Dial(*uri)
	if err != nil {
		log.Fatal(err)
	}
	subConn, err := amqp.Dial(*uri)
	if err != nil {
		log.Fatal(err)
	}
	pub, _ := pubConn.Channel()
	sub, _ := subConn.Channel()
	if _, err := pub.QueueDeclare(*queue, false, false, false, false, nil); err != nil {
		log.Fatal(err)
	}
	deliveries, err := sub.Consume(*queue, "", true, false, false, false, nil)
	if err != nil {
		log.Fatal(err)
	}
	var received atomic.Int64
	done := make(chan struct{})
	go func() {
		for range deliveries {
			received.Add(1)
		}
		close(done)
	}()
	body := make([]byte, *size)
	var sent int64
	start := time.Now()
	deadline := start.Add(*duration)
	for time.Now().Before(deadline) {
		for i := 0; i < 256; i++ {
			if err := pub.Publish("", *queue, false, false, amqp.Publishing{Body: body}); err != nil {
				log.Fatal(err)
			}
			sent++
		}
	}
	elapsed := time.Since(start).Seconds()
	// Wait (bounded) for the consumer to catch up.
	for end := time.Now().Add(30 * time.Second); received.Load() < sent && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	_, _ = pub.QueueDelete(*queue, false, false, false)
	_ = subConn.Close()
	<-done
	_ = pubConn.Close()
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
		"sent": sent, "received": received.Load(), "seconds": elapsed,
		"send_rate": float64(sent) / elapsed,
	})
}
