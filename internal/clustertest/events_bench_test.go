package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkCallbacks measures what the network-events path costs per
// message: the network's sent, delivered and read statuses cross simnetd ->
// plugin -> coreapp (gRPC), are acknowledged back, and, when the webhook
// wants them, stored in MariaDB, posted to a webhook (a receiver in this
// process) and marked delivered. A 2-shard cluster (1 master, 2 coreapps)
// takes MC_EVENTS_MESSAGES (default 3000) text messages from
// MC_EVENTS_CLIENTS (default 32) clients posting straight to the primary
// coreapps, in three phases of one run:
//
//   - no webhook: every status crosses to the coreapp and is acknowledged,
//     nothing is stored;
//   - webhook wanting sent, delivered and read: three callbacks per message;
//   - webhook wanting read only: one callback per message.
//
// Each phase ends once the network holds no unacknowledged event and, with
// a webhook, every wanted callback reached it and is marked delivered. It
// prints per message: CPU time of each role (the send path's share
// included: it is the same in every phase), SQL statements and fsyncs, and
// callbacks/s at the webhook.
//
//	go test -run '^$' -bench 'BenchmarkCallbacks$' -benchtime 1x -timeout 20m ./internal/clustertest
func BenchmarkCallbacks(b *testing.B) {
	n := envInt("MC_EVENTS_MESSAGES", 3000)
	clients := envInt("MC_EVENTS_CLIENTS", 32)
	c := New(b, Options{Masters: 1, Coreapps: 2, Shards: 2, Heartbeat: 1, Unhealthy: 5})
	hook := startCountingHook(b)
	tos := recipients(c, 200)
	phases := []struct {
		name     string
		settings string
		perMsg   int // callbacks the webhook wants per message
	}{
		{"no webhook", `{"webhooks":{"url":""}}`, 0},
		{"webhook: sent, delivered, read", fmt.Sprintf(`{"webhooks":{"url":%q,"message":{"sent":true,"delivered":true,"read":true}}}`, hook.url), 3},
		{"webhook: read only", fmt.Sprintf(`{"webhooks":{"url":%q,"message":{"sent":false,"delivered":false,"read":true}}}`, hook.url), 1},
	}
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for pi, ph := range phases {
			c.PatchSettings(ph.settings)
			time.Sleep(700 * time.Millisecond) // settings reach every node within one poll
			c.eventually(30*time.Second, "the previous phase settled", func() error { return eventsSettled(c) })
			hook.reset()
			net0 := networkCounts(b, c)
			meter := startCosts(b, c, c.Processes())
			start := time.Now()
			postMessages(b, c, tos, n, clients, fmt.Sprintf("p%d-%d", it, pi))
			posted := time.Since(start)
			want := int64(n * ph.perMsg)
			c.eventually(120*time.Second, "every wanted callback at the webhook, every event acknowledged", func() error {
				if got := hook.statuses.Load(); got < want {
					return fmt.Errorf("%d of %d callbacks at the webhook", got, want)
				}
				return eventsSettled(c)
			})
			all := time.Since(start)
			costs := meter.stop(b, n)
			net1 := networkCounts(b, c)
			got := hook.statuses.Load()
			if got > want {
				// At least once allows copies, but none is expected here.
				b.Logf("%d callbacks at the webhook for %d wanted (copies)", got, want)
			}
			var cpu strings.Builder
			for _, r := range costs.roles() {
				fmt.Fprintf(&cpu, " %s=%.0fµs", r, costs.perMsg(r))
			}
			total := costs.totalPerMsg()
			rate := 0.0
			if got > 0 {
				rate = float64(got) / all.Seconds()
			}
			d := costs.db
			per := func(k string) float64 { return float64(net1[k]-net0[k]) / float64(n) }
			b.Logf("%s: %d messages posted in %v, all settled in %v; %d callbacks (%.0f/s) in %d POSTs; per message: CPU%s total=%.0fµs; events pushed=%.2f acks=%.3f; statements=%.2f fsyncs=%.2f; top: %s",
				ph.name, n, posted.Round(time.Millisecond), all.Round(time.Millisecond), got, rate, hook.posts.Load(),
				cpu.String(), total, per("pushed_events"), per("acks"),
				costs.dbPerMsg(d.Statements()), costs.dbPerMsg(d.Fsyncs()), d.TopCommands(8))
			b.ReportMetric(total, fmt.Sprintf("cpu-µs/msg[%d]", pi))
			b.ReportMetric(costs.dbPerMsg(d.Statements()), fmt.Sprintf("stmts/msg[%d]", pi))
		}
	}
}

// eventsSettled is nil once the network holds no unacknowledged event and
// no stored callback waits for delivery.
func eventsSettled(c *Cluster) error {
	for s := 0; s < c.Opts.Shards; s++ {
		n, err := pendingEvents(c, s)
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("shard %d: %d events unacknowledged", s, n)
		}
	}
	var undelivered int
	if err := c.SQL.QueryRow(`SELECT COUNT(*) FROM callbacks WHERE delivered = 0`).Scan(&undelivered); err != nil {
		return err
	}
	if undelivered > 0 {
		return fmt.Errorf("%d callbacks not marked delivered", undelivered)
	}
	return nil
}

// networkCounts sums the network's counters of what crossed (pushed
// events, acks) over its shards; a network without them
// reads as zeros.
func networkCounts(b *testing.B, c *Cluster) map[string]int {
	var st struct {
		Shards []map[string]any `json:"shards"`
	}
	if err := c.SimnetJSON("/v1/shards", &st); err != nil {
		b.Fatal(err)
	}
	out := map[string]int{}
	for _, s := range st.Shards {
		for _, k := range []string{"pushed_events", "acks"} {
			if v, ok := s[k].(float64); ok {
				out[k] += int(v)
			}
		}
	}
	return out
}

// postMessages posts n text messages to tos (round robin) from clients
// concurrent clients, straight to each recipient's primary coreapp.
func postMessages(b *testing.B, c *Cluster, tos []string, n, clients int, tag string) {
	primaries := map[int]string{}
	for s := 0; s < c.Opts.Shards; s++ {
		addr, err := c.ShardPrimary(s)
		if err != nil {
			b.Fatal(err)
		}
		primaries[s] = addr
	}
	shardOf := make([]int, len(tos))
	for i, to := range tos {
		shardOf[i] = c.ShardOf(to)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				k := i % len(tos)
				body := fmt.Sprintf(`{"to":%q,"type":"text","text":{"body":"%s %d"}}`, tos[k], tag, i)
				code, _, out, err := c.PostMessageTo(ctx, primaries[shardOf[k]], body, "")
				if err == nil && code != 201 {
					err = fmt.Errorf("HTTP %d: %s", code, out)
				}
				if err != nil {
					errs <- fmt.Errorf("message %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// countingHook is a webhook that takes everything and counts the statuses
// and POSTs it took.
type countingHook struct {
	url      string
	statuses atomic.Int64
	posts    atomic.Int64
}

func (h *countingHook) reset() { h.statuses.Store(0); h.posts.Store(0) }

func startCountingHook(b *testing.B) *countingHook {
	h := &countingHook{}
	h.url, _ = serveHook(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p struct {
			Statuses []json.RawMessage `json:"statuses"`
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &p); err != nil {
			b.Errorf("webhook payload not JSON: %s", body)
		}
		h.statuses.Add(int64(len(p.Statuses)))
		h.posts.Add(1)
	}))
	return h
}
