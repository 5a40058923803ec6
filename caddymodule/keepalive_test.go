package caddymodule

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// burstGate holds requests until n of them are in flight at once, so each
// has a connection of its own to the node.
type burstGate struct {
	n       int64
	arrived atomic.Int64
	open    chan struct{}
}

func newBurstGate(n int) *burstGate { return &burstGate{n: int64(n), open: make(chan struct{})} }

// wait holds the caller until the nth arrives, or 8 s have passed (the
// burst then came short, which the test reports; the clients give up
// after 10 s).
func (g *burstGate) wait() {
	if g.arrived.Add(1) == g.n {
		close(g.open)
	}
	select {
	case <-g.open:
	case <-time.After(8 * time.Second):
	}
}

// TestGatewayKeepsIdleUpstreamConnections checks the README's default of
// 512 idle connections per node (not Caddy's 32) by what a node sees: a
// burst of 520 concurrent messages, held at the node until all have
// arrived, opens 520 connections to it; once they are answered, a second
// such burst reuses exactly 512 of them and dials 8. With Caddy's default
// it would reuse 32; with no limit, all 520.
func TestGatewayKeepsIdleUpstreamConnections(t *testing.T) {
	const (
		idle  = 512 // the README's default idle connections per node
		burst = idle + 8
	)
	c := newTestCluster(t, 1)
	var (
		mu    sync.Mutex
		gate  *burstGate
		conns map[string]bool // the connections (client addresses) that carried the burst's messages
	)
	node := c.addNodeWith("coreapp", func(srv *http.Server) {
		stub := srv.Handler
		srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/messages" {
				mu.Lock()
				g := gate
				conns[r.RemoteAddr] = true
				mu.Unlock()
				g.wait()
			}
			stub.ServeHTTP(w, r)
		})
	})
	node.shard.Store(0)
	node.connected.Store(true)
	c.assign(0, node, 1)
	g := c.startGateway("")
	auth := bearer(g.loginAdmin())

	run := func(round int) map[string]bool {
		mu.Lock()
		gate, conns = newBurstGate(burst), map[string]bool{}
		mu.Unlock()
		var wg sync.WaitGroup
		var failed atomic.Int64
		var firstErr atomic.Value
		for i := range burst {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if st, body := g.do("POST", "/v1/messages", messageBody("15551234567"), auth); st != http.StatusCreated {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("message %d: HTTP %d %s", i, st, body))
				}
			}()
		}
		wg.Wait()
		if n := failed.Load(); n > 0 {
			t.Fatalf("burst %d: %d of %d messages failed; first: %v", round, n, burst, firstErr.Load())
		}
		mu.Lock()
		defer mu.Unlock()
		return conns
	}
	first := run(1)
	if len(first) != burst {
		t.Fatalf("the first burst of %d concurrent messages came over %d connections, want one each", burst, len(first))
	}
	// Every connection of the first burst is back in the gateway's pool
	// (or closed, past the limit) once its answer was copied.
	time.Sleep(300 * time.Millisecond)
	second := run(2)
	reused := 0
	for addr := range second {
		if first[addr] {
			reused++
		}
	}
	t.Logf("burst of %d concurrent messages: %d connections to the node; the next burst reused %d and dialled %d",
		burst, len(first), reused, len(second)-reused)
	if reused != idle {
		t.Errorf("the gateway kept %d idle connections to the node between bursts, want %d (the README's default)", reused, idle)
	}
}
