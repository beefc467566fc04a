// Package integration runs RabbitMQ's official Go client (amqp091-go) against the Warren
// release binary, started by the tests on an ephemeral port.
//
// With AMQP_URL (and MANAGEMENT_URL, e.g. http://127.0.0.1:15672/api) set, the tests that need
// no broker of their own run against that broker instead: the differential run against
// RabbitMQ (../../integration/go/README.md). The others (restarts, a config file, TLS,
// features RabbitMQ 3.10 lacks) are skipped then.
package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// broker is one Warren process; restart starts it again on the same ports and data dir.
type broker struct {
	t       *testing.T
	bin     string
	dataDir string // "" keeps everything in memory
	config  string // "" uses the embedded broker.toml
	cmd     *exec.Cmd
	port    string
	tlsPort string
	mgmt    string
	log     *strings.Builder
	logMu   *sync.Mutex
}

// URL is the broker's AMQP URL for guest.
func (b *broker) URL() string { return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%s/", b.port) }

// API is the management API's base URL.
func (b *broker) API() string { return "http://127.0.0.1:" + b.mgmt + "/api" }

// external returns AMQP_URL and MANAGEMENT_URL when the tests run against another broker.
func external() (string, string, bool) {
	u := os.Getenv("AMQP_URL")
	return u, os.Getenv("MANAGEMENT_URL"), u != ""
}

// warrenOnly skips a test that needs a broker of its own (restarts, config) when the suite
// runs against an external broker.
func warrenOnly(t *testing.T, why string) {
	t.Helper()
	if _, _, ok := external(); ok {
		t.Skip("needs its own Warren: " + why)
	}
}

// startBroker starts target/release/warren (or $WARREN_BIN) in memory on a free port and
// returns its AMQP URL; the broker is stopped when the test ends.
func startBroker(t *testing.T) string {
	url, _ := startBrokerWith(t)
	return url
}

// startBrokerWith returns the AMQP URL and the management API's base URL of a broker in
// memory (or of the external broker).
func startBrokerWith(t *testing.T) (string, string) {
	if u, api, ok := external(); ok {
		return u, api
	}
	b := launch(t, "", "")
	return b.URL(), b.API()
}

// launch starts a broker with a data dir ("" for memory) and a config file ("" for none).
func launch(t *testing.T, dataDir, config string) *broker {
	t.Helper()
	bin := os.Getenv("WARREN_BIN")
	if bin == "" {
		bin, _ = filepath.Abs("../../target/release/warren")
	}
	b := &broker{t: t, bin: bin, dataDir: dataDir, config: config, port: "0", mgmt: "0", logMu: &sync.Mutex{}}
	b.start()
	t.Cleanup(func() { b.stop(false) })
	return b
}

func (b *broker) start() {
	t := b.t
	t.Helper()
	args := []string{"--bind", "127.0.0.1", "--port", b.port, "--log-level", "info",
		"--management-port", b.mgmt}
	if b.dataDir == "" {
		args = append(args, "--in-memory")
	} else {
		args = append(args, "--data-dir", b.dataDir)
	}
	if b.config != "" {
		args = append(args, "--config", b.config)
	}
	b.cmd = exec.Command(b.bin, args...)
	b.log = &strings.Builder{}
	b.cmd.Stderr = &lockedWriter{b: b.log, mu: b.logMu}
	stdout, err := b.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", b.bin, err)
	}
	// Once listening, the broker prints one JSON line on stdout with every listener's address.
	ready := make(chan readyLine, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var r readyLine
			if json.Unmarshal(sc.Bytes(), &r) == nil && r.Warren == "ready" {
				ready <- r
			}
		}
	}()
	select {
	case r := <-ready:
		b.port = portOf(r.AMQP)
		b.tlsPort = portOf(r.AMQPS)
		b.mgmt = portOf(r.Management)
	case <-time.After(30 * time.Second):
		t.Fatalf("warren did not start within 30 s:\n%s", b.logText())
	}
}

// readyLine is the broker's "ready" line on stdout.
type readyLine struct {
	Warren     string `json:"warren"`
	AMQP       string `json:"amqp"`
	AMQPS      string `json:"amqps"`
	Management string `json:"management"`
}

func portOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i+1:]
	}
	return ""
}

// lockedWriter collects the broker's log.
type lockedWriter struct {
	b  *strings.Builder
	mu *sync.Mutex
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (b *broker) logText() string {
	b.logMu.Lock()
	defer b.logMu.Unlock()
	return b.log.String()
}

// stop stops the broker: SIGTERM (an orderly shutdown) or, with kill, SIGKILL.
func (b *broker) stop(kill bool) {
	if b.cmd == nil {
		return
	}
	if kill {
		_ = b.cmd.Process.Kill()
	} else {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
	}
	_ = b.cmd.Wait()
	b.cmd = nil
}

// restart stops the broker and starts it again on the same ports and data dir.
func (b *broker) restart(kill bool) {
	b.t.Helper()
	b.stop(kill)
	b.start()
}
