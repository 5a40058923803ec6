package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The command serves the test server on the address it prints and stops
// when told.
func TestRunPrintsItsAddressAndServes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-access-token", "tok", "-phone-number-id", "1234,5678", "-pair-interval", "1s", "-log-level", "warn"}, pw)
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	base := strings.TrimSpace(line)
	if !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Fatalf("printed %q", line)
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/v23.0/5678/messages", strings.NewReader(`{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text","text":{"body":"x"}}`))
	req.Header.Set("Authorization", "Bearer tok")
	req.Header.Set("Content-Type", "application/json")
	for i, want := range []int{200, 400} { // the second to one recipient: pair limit
		resp, err := http.DefaultClient.Do(req.Clone(ctx))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || (i == 1 && !strings.Contains(string(b), "131056")) {
			t.Fatalf("send %d: %d %s", i, resp.StatusCode, b)
		}
		req.Body = io.NopCloser(strings.NewReader(`{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text","text":{"body":"x"}}`))
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return")
	}
	if err := run(context.Background(), []string{"-listen", "127.0.0.1:0"}, io.Discard); err == nil {
		t.Error("no -access-token: want an error")
	}
}
