package integration

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The flow of amqp091-go's own connection-recovery tests: find a connection by its
// connection_name through the management API (GET /api/connections/), close it
// (DELETE /api/connections/{name}), and see NotifyClose report 320 CONNECTION_FORCED.
func TestConnectionClosedThroughTheManagementAPI(t *testing.T) {
	amqpURL, api := startBrokerWith(t)
	cfg := amqp.Config{Properties: amqp.NewConnectionProperties()}
	cfg.Properties.SetClientConnectionName("recovery-test")
	conn, err := amqp.DialConfig(amqpURL, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))

	var name string
	deadline := time.Now().Add(10 * time.Second)
	for name == "" && time.Now().Before(deadline) {
		req, _ := http.NewRequest("GET", api+"/connections/", nil)
		req.SetBasicAuth("guest", "guest")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var conns []struct {
			Name             string         `json:"name"`
			ClientProperties map[string]any `json:"client_properties"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&conns); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		for _, c := range conns {
			if c.ClientProperties["connection_name"] == "recovery-test" {
				name = c.Name
			}
		}
	}
	if name == "" {
		t.Fatal("the connection is not listed by its connection_name")
	}

	req, _ := http.NewRequest("DELETE", api+"/connections/"+url.PathEscape(name), nil)
	req.SetBasicAuth("guest", "guest")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	select {
	case e := <-closed:
		if e == nil || e.Code != 320 || e.Reason != "CONNECTION_FORCED - Closed via management plugin" {
			t.Fatalf("NotifyClose: %+v", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connection was not closed")
	}
}
