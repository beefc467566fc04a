// godelay: 1,000,000 durable delayed messages through an x-delayed-message exchange, with
// RabbitMQ's official Go client (amqp091-go) as an independent load generator. Publishes
// persistent messages with confirms, each due `-wait` plus a share of `-spread` after it is
// sent; reads the broker's RSS (/proc/PID/status) before and while they all wait; then
// consumes them and reports how late each arrived after its due time (the client's clock:
// publish time + x-delay, so lateness includes the publish's own latency).
//
//	go run . -uri amqp://guest:guest@127.0.0.1:5672/ -pid $(pidof warren) -n 1000000
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"log"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func rssKiB(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return -1
}

func main() {
	uri := flag.String("uri", "amqp://guest:guest@127.0.0.1:5672/", "broker URI")
	pid := flag.Int("pid", 0, "broker PID (for RSS)")
	n := flag.Int("n", 1000000, "messages")
	size := flag.Int("size", 128, "body size in bytes (at least 8)")
	wait := flag.Duration("wait", 40*time.Second, "smallest delay")
	spread := flag.Duration("spread", 60*time.Second, "delays spread over this much more")
	window := flag.Int("window", 256, "unconfirmed publishes in flight")
	flag.Parse()
	if *size < 8 {
		*size = 8
	}

	conn, err := amqp.Dial(*uri)
	if err != nil {
		log.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	if err := ch.ExchangeDeclare("godelay", "x-delayed-message", true, false, false, false,
		amqp.Table{"x-delayed-type": "direct"}); err != nil {
		log.Fatal(err)
	}
	if _, err := ch.QueueDeclare("godelay", true, false, false, false, nil); err != nil {
		log.Fatal(err)
	}
	if err := ch.QueueBind("godelay", "k", "godelay", false, nil); err != nil {
		log.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		log.Fatal(err)
	}
	rssBefore := rssKiB(*pid)

	ctx := context.Background()
	body := make([]byte, *size)
	inflight := make([]*amqp.DeferredConfirmation, 0, *window)
	start := time.Now()
	for i := 0; i < *n; i++ {
		// Whole milliseconds: x-delay is in ms, and the due time must be the one asked for.
		delay := (*wait + time.Duration(int64(*spread)*int64(i)/int64(*n))).Truncate(time.Millisecond)
		due := time.Now().Add(delay)
		binary.BigEndian.PutUint64(body, uint64(due.UnixNano()))
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "godelay", "k", false, false,
			amqp.Publishing{
				DeliveryMode: amqp.Persistent,
				Headers:      amqp.Table{"x-delay": int64(delay / time.Millisecond)},
				Body:         body,
			})
		if err != nil {
			log.Fatal(err)
		}
		inflight = append(inflight, dc)
		if len(inflight) == *window {
			for _, d := range inflight {
				if !d.Wait() {
					log.Fatal("nacked")
				}
			}
			inflight = inflight[:0]
		}
	}
	for _, d := range inflight {
		if !d.Wait() {
			log.Fatal("nacked")
		}
	}
	published := time.Since(start)
	// Let paging settle, then read the RSS with every message waiting.
	time.Sleep(3 * time.Second)
	rssWaiting := rssKiB(*pid)

	cch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	if err := cch.Qos(2000, 0, false); err != nil {
		log.Fatal(err)
	}
	msgs, err := cch.Consume("godelay", "", false, false, false, false, nil)
	if err != nil {
		log.Fatal(err)
	}
	late := make([]float64, 0, *n)
	limit := time.After(*wait + *spread + 5*time.Minute)
	got := 0
loop:
	for got < *n {
		select {
		case m := <-msgs:
			due := time.Unix(0, int64(binary.BigEndian.Uint64(m.Body)))
			late = append(late, float64(time.Since(due).Microseconds())/1000)
			got++
			if got%100 == 0 || got == *n {
				m.Ack(true)
			}
		case <-limit:
			break loop
		}
	}
	sort.Float64s(late)
	pct := func(p float64) float64 {
		if len(late) == 0 {
			return 0
		}
		return late[int(p*float64(len(late)-1))]
	}
	_, _ = ch.QueueDelete("godelay", false, false, false)
	_ = ch.ExchangeDelete("godelay", false, false)
	out := map[string]any{
		"messages":              *n,
		"size":                  *size,
		"publish_secs":          published.Seconds(),
		"publish_rate":          float64(*n) / published.Seconds(),
		"rss_before_kib":        rssBefore,
		"rss_waiting_kib":       rssWaiting,
		"rss_bytes_per_waiting": float64(rssWaiting-rssBefore) * 1024 / float64(*n),
		"received":              got,
		"lateness_ms_p50":       pct(0.50),
		"lateness_ms_p99":       pct(0.99),
		"lateness_ms_max":       pct(1.0),
		"early":                 sort.SearchFloat64s(late, 0),
	}
	json.NewEncoder(os.Stdout).Encode(out)
	conn.Close()
}
