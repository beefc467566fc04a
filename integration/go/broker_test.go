// Package integration runs RabbitMQ's official Go client (amqp091-go) against the Warren
// release binary, started by the tests on an ephemeral port.
package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

var listening = regexp.MustCompile(`connections on 127\.0\.0\.1:(\d+)`)
var management = regexp.MustCompile(`management API listening on http://127\.0\.0\.1:(\d+)/`)

// startBroker starts target/release/warren (or $WARREN_BIN) in memory on a free port and
// returns its AMQP URL; the broker is stopped when the test ends.
func startBroker(t *testing.T) string {
	url, _ := startBrokerWith(t)
	return url
}

// startBrokerWith starts the broker with the management API on a free port too (its port is
// logged before the AMQP one) and returns the AMQP URL and the API's base URL.
func startBrokerWith(t *testing.T, extra ...string) (string, string) {
	t.Helper()
	bin := os.Getenv("WARREN_BIN")
	if bin == "" {
		bin, _ = filepath.Abs("../../target/release/warren")
	}
	args := append([]string{"--bind", "127.0.0.1", "--port", "0", "--in-memory", "--log-level", "info",
		"--management-port", "0"}, extra...)
	cmd := exec.Command(bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	port := make(chan string, 1)
	mgmt := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := management.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case mgmt <- m[1]:
				default:
				}
			}
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case port <- m[1]:
				default:
				}
			}
		}
	}()
	select {
	case p := <-port:
		// The management line comes first in the log: it is there by now.
		return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%s/", p), "http://127.0.0.1:" + <-mgmt + "/api"
	case <-time.After(30 * time.Second):
		t.Fatal("warren did not start within 30 s")
		return "", ""
	}
}
