// goscale: the "scale rows" of bench/scale.sh, measured with an independent client (RabbitMQ's
// official Go client, amqp091-go, as bench/goperf). Each subcommand prints one JSON object on
// stdout; progress and errors go to stderr.
//
//	goscale conns  -uri U -n 10000 -parallel 64 [-consume]   open N connections (+ channel each)
//	goscale queues -uri U -n 100000 [-durable] [-delete]      declare N queues on one channel
//	goscale topic  -uri U -bindings 100000 -queues 100        topic routing with many bindings
//	goscale fanout -uri U -queues 1000 -conns 10              fanout to many queues
//	goscale fill   -uri U -n 10000000 -size 16 -queue Q       N transient messages, confirms
//	goscale drain  -uri U -queue Q                            consume Q (no-ack) until empty
//
// Common flags: -pid PID makes the tool sample the broker's VmRSS (/proc/PID/status, kB) and
// CPU (utime+stime from /proc/PID/stat, in ticks of 1/100 s) at each phase, so one JSON object
// carries the whole measurement. -hold D keeps the connections/queues in place for D after they
// are set up (the RSS "with" sample is taken at the end of the hold); a negative D (-hold -1s)
// holds until stdin closes or SIGINT/SIGTERM/SIGUSR1 arrives (for an outside observer;
// "holding" is printed on stderr when the hold starts). -settle D is the pause before the RSS
// "after" sample. Every object also carries client_cpu_s, the tool's own CPU time.
//
// Publishers never use confirms except in fill, where a window of 1000 unconfirmed messages
// makes the publish rate what the broker has actually taken in. topic and fanout publishers
// stop while the consumers are more than -max-backlog deliveries behind (0 = never stop), so
// their rates are sustained rates, not how fast the broker can buffer into ever longer queues.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// common holds the flags every subcommand takes.
type common struct {
	uri    string
	pid    int
	hold   time.Duration
	settle time.Duration
}

func flags(name string, hold time.Duration) (*flag.FlagSet, *common) {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	c := &common{}
	fs.StringVar(&c.uri, "uri", "amqp://guest:guest@127.0.0.1:5672/", "broker URI")
	fs.IntVar(&c.pid, "pid", 0, "broker PID: sample its RSS and CPU ticks (0 = don't)")
	fs.DurationVar(&c.hold, "hold", hold, "hold time once set up (<0: until stdin closes or a signal)")
	fs.DurationVar(&c.settle, "settle", 2*time.Second, "pause before the last RSS sample")
	return fs, c
}

// rss and ticks read the broker's VmRSS (kB) and utime+stime (ticks); -1 without -pid or on error.
func (c *common) rss() int64 {
	if c.pid == 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return -1
}

func (c *common) ticks() int64 {
	if c.pid == 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.pid))
	if err != nil {
		return -1
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from 3 (state) on
	u, _ := strconv.ParseInt(f[11], 10, 64)                  // field 14: utime
	k, _ := strconv.ParseInt(f[12], 10, 64)                  // field 15: stime
	return u + k
}

// doHold waits as -hold says.
func (c *common) doHold() {
	if c.hold == 0 {
		return
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR1)
	defer signal.Stop(sig)
	var timer <-chan time.Time
	eof := make(chan struct{})
	if c.hold > 0 {
		timer = time.After(c.hold)
	} else {
		go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(eof) }()
	}
	log.Printf("holding (%v)", c.hold)
	select {
	case <-timer:
	case <-eof:
	case <-sig:
	}
}

func rate(n int64, s float64) float64 {
	if s <= 0 {
		return 0
	}
	return float64(n) / s
}

// errs counts failures and keeps the first message.
type errs struct {
	mu    sync.Mutex
	n     int
	first string
}

func (e *errs) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == 0 {
		e.first = err.Error()
		log.Print(err)
	}
	e.n++
}

// parallel runs f(0..n-1) on `workers` goroutines.
func parallel(n, workers int, f func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func dial(uri string) (*amqp.Connection, *amqp.Channel) {
	conn, err := amqp.Dial(uri)
	must(err)
	ch, err := conn.Channel()
	must(err)
	return conn, ch
}

// conns: N connections, each with one channel (and with -consume one basic.consume on a shared,
// empty queue, as row r7 of run.sh), opened by `parallel` goroutines; held; closed the same way.
func conns(args []string) map[string]any {
	fs, c := flags("conns", 5*time.Second)
	n := fs.Int("n", 10000, "connections")
	par := fs.Int("parallel", 64, "goroutines opening (and closing) connections")
	consume := fs.Bool("consume", false, "one basic.consume per channel on -queue")
	queue := fs.String("queue", "scale-conns", "shared queue for -consume (declared, deleted at the end)")
	must(fs.Parse(args))
	out := map[string]any{"cmd": "conns", "n": *n, "parallel": *par, "consume": *consume}
	if *consume {
		conn, ch := dial(c.uri)
		_, err := ch.QueueDeclare(*queue, false, false, false, false, nil)
		must(err)
		defer func() { _, _ = ch.QueueDelete(*queue, false, false, false); _ = conn.Close() }()
	}
	r0 := c.rss()
	cs := make([]*amqp.Connection, *n)
	var e errs
	start := time.Now()
	parallel(*n, *par, func(i int) {
		conn, err := amqp.Dial(c.uri)
		if err != nil {
			e.add(err)
			return
		}
		ch, err := conn.Channel()
		if err == nil && *consume {
			var d <-chan amqp.Delivery
			if d, err = ch.Consume(*queue, "", true, false, false, false, nil); err == nil {
				go func() {
					for range d { // nothing arrives; ends when the channel closes
					}
				}()
			}
		}
		if err != nil {
			e.add(err)
			_ = conn.Close()
			return
		}
		cs[i] = conn
	})
	openS := time.Since(start).Seconds()
	opened := int64(*n - e.n)
	log.Printf("opened %d connections in %.2f s (%d errors)", opened, openS, e.n)
	c.doHold()
	r1 := c.rss()
	start = time.Now()
	var ce errs
	parallel(*n, *par, func(i int) {
		if cs[i] != nil {
			if err := cs[i].Close(); err != nil {
				ce.add(err)
			}
		}
	})
	closeS := time.Since(start).Seconds()
	time.Sleep(c.settle)
	r2 := c.rss()
	out["opened"], out["errors"], out["first_error"] = opened, e.n, e.first
	out["open_seconds"], out["open_rate"] = openS, rate(opened, openS)
	out["close_seconds"], out["close_errors"] = closeS, ce.n
	out["rss_before_kb"], out["rss_with_kb"], out["rss_after_kb"] = r0, r1, r2
	if c.pid != 0 && opened > 0 {
		out["kb_per_conn"] = float64(r1-r0) / float64(opened)
	}
	return out
}

// queues: declare N queues scale-q-0.. one after the other (declare, wait for declare-ok) on
// one channel; hold; with -delete delete them the same way.
func queues(args []string) map[string]any {
	fs, c := flags("queues", 0)
	n := fs.Int("n", 100000, "queues")
	durable := fs.Bool("durable", false, "durable queues")
	del := fs.Bool("delete", false, "delete the queues afterwards (timed)")
	must(fs.Parse(args))
	out := map[string]any{"cmd": "queues", "n": *n, "durable": *durable}
	conn, ch := dial(c.uri)
	defer conn.Close()
	r0 := c.rss()
	var declared int64
	start := time.Now()
	for i := 0; i < *n; i++ {
		if _, err := ch.QueueDeclare(fmt.Sprintf("scale-q-%d", i), *durable, false, false, false, nil); err != nil {
			out["error"] = err.Error() // the channel is closed now: stop here
			log.Print(err)
			break
		}
		declared++
	}
	s := time.Since(start).Seconds()
	out["declared"], out["declare_seconds"], out["declare_rate"] = declared, s, rate(declared, s)
	c.doHold()
	time.Sleep(c.settle)
	r1 := c.rss()
	out["rss_before_kb"], out["rss_with_kb"] = r0, r1
	if c.pid != 0 && declared > 0 {
		out["bytes_per_queue"] = float64(r1-r0) * 1024 / float64(declared)
	}
	if *del && out["error"] == nil {
		var deleted int64
		start = time.Now()
		for i := int64(0); i < declared; i++ {
			if _, err := ch.QueueDelete(fmt.Sprintf("scale-q-%d", i), false, false, false); err != nil {
				out["delete_error"] = err.Error()
				break
			}
			deleted++
		}
		s = time.Since(start).Seconds()
		out["deleted"], out["delete_seconds"], out["delete_rate"] = deleted, s, rate(deleted, s)
		time.Sleep(c.settle)
		out["rss_after_kb"] = c.rss()
	}
	return out
}

// consumeAll starts one no-ack consumer per queue, each on its own channel, the channels spread
// over nconn connections; every delivery adds 1 to the counter.
func consumeAll(uri string, qs []string, nconn int, got *atomic.Int64) []*amqp.Connection {
	var conns []*amqp.Connection
	for i := 0; i < nconn; i++ {
		conn, err := amqp.Dial(uri)
		must(err)
		conns = append(conns, conn)
	}
	for i, q := range qs {
		ch, err := conns[i%nconn].Channel()
		must(err)
		d, err := ch.Consume(q, "", true, false, false, false, nil)
		must(err)
		go func() {
			for range d {
				got.Add(1)
			}
		}()
	}
	return conns
}

// pubRun publishes (no confirms) to exchange ex with routing keys from key() for duration, in
// batches of 64 messages, pausing while the consumers are more than maxBacklog deliveries behind
// (each message makes `fan` deliveries). Then it waits up to `drain` for the consumers to catch
// up (they are done when the counter reaches sent*fan, or stalled when it stops moving).
func pubRun(c *common, ch *amqp.Channel, ex string, key func() string, size int, duration, drain time.Duration,
	fan, maxBacklog int64, got *atomic.Int64, out map[string]any) {
	body := make([]byte, size)
	ctx := context.Background()
	t0 := c.ticks()
	var sent int64
	start := time.Now()
	deadline := start.Add(duration)
	for time.Now().Before(deadline) {
		for maxBacklog > 0 && sent*fan-got.Load() > maxBacklog && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
		for i := 0; i < 64; i++ {
			must(ch.PublishWithContext(ctx, ex, key(), false, false, amqp.Publishing{Body: body}))
			sent++
		}
	}
	pubS := time.Since(start).Seconds()
	last, lastAt := got.Load(), time.Now()
	for end := time.Now().Add(drain); last < sent*fan && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
		if g := got.Load(); g != last {
			last, lastAt = g, time.Now()
		}
	}
	recvS := lastAt.Sub(start).Seconds()
	t1 := c.ticks()
	out["sent"], out["publish_seconds"], out["send_rate"] = sent, pubS, rate(sent, pubS)
	out["deliveries"], out["expected_deliveries"] = last, sent*fan
	out["receive_seconds"], out["delivery_rate"] = recvS, rate(last, recvS)
	out["received_msg_rate"] = rate(last, recvS) / float64(fan) // published messages fully delivered/s
	if c.pid != 0 {
		out["cpu_ticks"] = t1 - t0 // publishing + draining
		if sent > 0 {
			out["cpu_us_per_msg"] = float64(t1-t0) * 10000 / float64(sent)
		}
	}
}

// teardown deletes the queues (timed: that removes their bindings too) and the exchange, and
// closes the consumer connections.
func teardown(ch *amqp.Channel, ex string, qs []string, subs []*amqp.Connection, out map[string]any) {
	start := time.Now()
	for _, q := range qs {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			out["delete_error"] = err.Error()
			break
		}
	}
	out["queue_delete_seconds"] = time.Since(start).Seconds()
	_ = ch.ExchangeDelete(ex, false, false)
	for _, s := range subs {
		_ = s.Close()
	}
}

// publishing holds the publisher flags topic and fanout share.
type publishing struct {
	duration, drain *time.Duration
	size            *int
	backlog         *int64
}

func publishFlags(fs *flag.FlagSet, backlog int64) publishing {
	return publishing{
		duration: fs.Duration("duration", 10*time.Second, "publishing time"),
		size:     fs.Int("size", 16, "body size in bytes"),
		drain:    fs.Duration("drain", 5*time.Second, "longest wait for the consumers after publishing"),
		backlog:  fs.Int64("max-backlog", backlog, "publisher pauses while this many deliveries are outstanding (0: never)"),
	}
}

// declareAll declares exchange ex of kind and n queues named ex-q-<i>, bound to it with an
// empty key if bind.
func declareAll(ch *amqp.Channel, ex, kind string, n int, bind bool) []string {
	must(ch.ExchangeDeclare(ex, kind, false, false, false, false, nil))
	qs := make([]string, n)
	for i := range qs {
		qs[i] = fmt.Sprintf("%s-q-%d", ex, i)
		_, err := ch.QueueDeclare(qs[i], false, false, false, false, nil)
		must(err)
		if bind {
			must(ch.QueueBind(qs[i], "", ex, false, nil))
		}
	}
	return qs
}

// topic: a topic exchange with -bindings bindings `k.<i>.*` spread over -queues queues (binding
// i on queue i % queues), one consumer per queue, then one publisher with routing keys
// `k.<random i>.x`, each matching exactly one binding.
func topic(args []string) map[string]any {
	fs, c := flags("topic", 0)
	nb := fs.Int("bindings", 100000, "bindings")
	nq := fs.Int("queues", 100, "queues")
	p := publishFlags(fs, 10000)
	must(fs.Parse(args))
	out := map[string]any{"cmd": "topic", "bindings": *nb, "queues": *nq, "size": *p.size}
	conn, ch := dial(c.uri)
	defer conn.Close()
	const ex = "scale-topic"
	qs := declareAll(ch, ex, "topic", *nq, false)
	r0 := c.rss()
	start := time.Now()
	for i := 0; i < *nb; i++ {
		must(ch.QueueBind(qs[i%*nq], "k."+strconv.Itoa(i)+".*", ex, false, nil))
	}
	s := time.Since(start).Seconds()
	time.Sleep(c.settle)
	r1 := c.rss()
	out["bind_seconds"], out["bind_rate"] = s, rate(int64(*nb), s)
	out["rss_before_bind_kb"], out["rss_after_bind_kb"] = r0, r1
	if c.pid != 0 {
		out["bytes_per_binding"] = float64(r1-r0) * 1024 / float64(*nb)
	}
	c.doHold()
	var got atomic.Int64
	subs := consumeAll(c.uri, qs, 1, &got)
	keys := make([]string, *nb)
	for i := range keys {
		keys[i] = "k." + strconv.Itoa(i) + ".x"
	}
	pubRun(c, ch, ex, func() string { return keys[rand.IntN(len(keys))] }, *p.size, *p.duration, *p.drain, 1, *p.backlog, &got, out)
	teardown(ch, ex, qs, subs, out) // deleting the queues removes their bindings
	return out
}

// fanout: a fanout exchange bound to -queues queues, one consumer per queue (channels spread
// over -conns connections), one publisher.
func fanout(args []string) map[string]any {
	fs, c := flags("fanout", 0)
	nq := fs.Int("queues", 1000, "queues")
	nconn := fs.Int("conns", 10, "consumer connections")
	p := publishFlags(fs, 100000)
	must(fs.Parse(args))
	out := map[string]any{"cmd": "fanout", "queues": *nq, "conns": *nconn, "size": *p.size}
	conn, ch := dial(c.uri)
	defer conn.Close()
	const ex = "scale-fanout"
	qs := declareAll(ch, ex, "fanout", *nq, true)
	var got atomic.Int64
	subs := consumeAll(c.uri, qs, *nconn, &got)
	c.doHold()
	pubRun(c, ch, ex, func() string { return "" }, *p.size, *p.duration, *p.drain, int64(*nq), *p.backlog, &got, out)
	teardown(ch, ex, qs, subs, out)
	return out
}

// fill: publish N transient messages (delivery mode 1) to one queue with no consumer, with
// publisher confirms, at most -window unconfirmed. The queue is left for `drain`.
func fill(args []string) map[string]any {
	fs, c := flags("fill", 0)
	n := fs.Int64("n", 10000000, "messages")
	size := fs.Int("size", 16, "body size in bytes")
	queue := fs.String("queue", "scale-fill", "queue (declared; left in place for drain)")
	window := fs.Int("window", 1000, "unconfirmed messages at most")
	durable := fs.Bool("durable", false, "durable queue (the messages stay transient)")
	must(fs.Parse(args))
	out := map[string]any{"cmd": "fill", "n": *n, "size": *size, "window": *window}
	conn, ch := dial(c.uri)
	defer conn.Close()
	blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 16))
	go func() {
		for b := range blocked {
			log.Printf("connection.blocked: active=%v reason=%q", b.Active, b.Reason)
		}
	}()
	_, err := ch.QueueDeclare(*queue, *durable, false, false, false, nil)
	must(err)
	must(ch.Confirm(false))
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, *window))
	sem := make(chan struct{}, *window) // one token per unconfirmed message
	var acked, nacked atomic.Int64
	closed := make(chan struct{})
	go func() {
		for cf := range confirms { // in delivery-tag order; multiple acks come expanded
			if cf.Ack {
				acked.Add(1)
			} else {
				nacked.Add(1)
			}
			<-sem
		}
		close(closed) // the channel is gone
	}()
	body := make([]byte, *size)
	ctx := context.Background()
	msg := amqp.Publishing{Body: body, DeliveryMode: amqp.Transient}
	time.Sleep(c.settle)
	r0, t0 := c.rss(), c.ticks()
	var sent int64
	start := time.Now()
	acquire := func() bool {
		select {
		case sem <- struct{}{}:
			return true
		case <-closed:
			return false
		}
	}
	for ; sent < *n && acquire(); sent++ {
		must(ch.PublishWithContext(ctx, "", *queue, false, false, msg))
	}
	for i := 0; i < *window && acquire(); i++ { // the window full again = all confirmed
	}
	s := time.Since(start).Seconds()
	t1 := c.ticks()
	time.Sleep(c.settle)
	r1 := c.rss()
	out["sent"], out["acked"], out["nacked"] = sent, acked.Load(), nacked.Load()
	out["seconds"], out["rate"] = s, rate(acked.Load(), s)
	out["rss_before_kb"], out["rss_after_kb"] = r0, r1
	if c.pid != 0 && acked.Load() > 0 {
		out["bytes_per_msg"] = float64(r1-r0) * 1024 / float64(acked.Load())
		out["cpu_us_per_msg"] = float64(t1-t0) * 10000 / float64(acked.Load())
	}
	c.doHold()
	return out
}

// drain: consume -queue with no-ack until the count from a passive declare has arrived (or no
// delivery came for -idle); report the rate and what is left; with -delete delete the queue.
func drain(args []string) map[string]any {
	fs, c := flags("drain", 0)
	queue := fs.String("queue", "scale-fill", "queue")
	idle := fs.Duration("idle", 5*time.Second, "give up after this long without a delivery")
	del := fs.Bool("delete", false, "delete the queue afterwards")
	must(fs.Parse(args))
	conn, ch := dial(c.uri)
	defer conn.Close()
	q, err := ch.QueueDeclarePassive(*queue, false, false, false, false, nil)
	must(err)
	want := int64(q.Messages)
	sub, err := conn.Channel()
	must(err)
	t0 := c.ticks()
	start := time.Now()
	d, err := sub.Consume(*queue, "", true, false, false, false, nil)
	must(err)
	var got int64
	lastAt := start
	timer := time.NewTimer(*idle)
loop:
	for got < want {
		select {
		case _, ok := <-d:
			if !ok {
				break loop
			}
			got++
			if got&1023 == 0 || got == want { // time.Now() per message would cost more than the rest
				lastAt = time.Now()
				timer.Reset(*idle)
			}
		case <-timer.C:
			break loop
		}
	}
	if got == want {
		lastAt = time.Now()
	}
	s := lastAt.Sub(start).Seconds()
	t1 := c.ticks()
	_ = sub.Close()
	out := map[string]any{"cmd": "drain", "queue": *queue, "expected": want, "delivered": got,
		"seconds": s, "rate": rate(got, s)}
	if q, err := ch.QueueDeclarePassive(*queue, false, false, false, false, nil); err == nil {
		out["remaining"] = q.Messages
	}
	if c.pid != 0 && got > 0 {
		out["cpu_us_per_msg"] = float64(t1-t0) * 10000 / float64(got)
	}
	if *del {
		_, _ = ch.QueueDelete(*queue, false, false, false)
	}
	time.Sleep(c.settle)
	out["rss_after_kb"] = c.rss()
	return out
}

func main() {
	log.SetFlags(log.Ltime)
	log.SetPrefix("goscale: ")
	cmds := map[string]func([]string) map[string]any{
		"conns": conns, "queues": queues, "topic": topic, "fanout": fanout, "fill": fill, "drain": drain}
	if len(os.Args) < 2 || cmds[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: goscale conns|queues|topic|fanout|fill|drain [flags] (-h for flags)")
		os.Exit(2)
	}
	out := cmds[os.Args[1]](os.Args[2:])
	// The client's own CPU time: close to the wall time means the client was the bottleneck.
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		out["client_cpu_s"] = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}
