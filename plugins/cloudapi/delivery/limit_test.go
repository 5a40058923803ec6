package delivery

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphtest"
)

// Two shards' engines against the Graph API test server enforcing the
// number's limit: with the shard count right, their shares add up to the
// limit and the server never answers 130429; with each engine believing
// it is alone (twice the limit in all), the server throttles, the engines
// back off the number and still deliver everything, in order.
func TestLimitAgainstServer(t *testing.T) {
	const limit, perShard = 40, 60
	for _, c := range []struct {
		name     string
		shards   int // what each engine is told
		throttle bool
	}{
		{"shares", 2, false},
		{"each_alone", 1, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			gs, err := graphtest.New(graphtest.Config{PhoneNumberIDs: []string{benchPhone}, AccessToken: "bench-token",
				AppSecret: "bench-secret", Throughput: limit, Statuses: []string{"sent"}})
			if err != nil {
				t.Fatal(err)
			}
			defer gs.Close()
			srv := httptest.NewServer(gs)
			defer srv.Close()
			client := graph.New(graph.Config{BaseURL: srv.URL, PhoneNumberID: benchPhone, AccessToken: "bench-token", Timeout: 5 * time.Second})
			var unknown atomic.Int64
			start := time.Now()
			var wg sync.WaitGroup
			for sh := 0; sh < 2; sh++ {
				cfg := fast()
				cfg.Unlimited, cfg.Throughput, cfg.Shard, cfg.Shards, cfg.Concurrency = false, limit, sh, c.shards, 8
				cfg.ThrottleInitial, cfg.ThrottleMax = 200*time.Millisecond, time.Second
				e := NewEngine(cfg, graphPoster{client, &unknown}, newMemStore())
				var pending []Outgoing
				for i := 0; i < perShard; i++ {
					id := fmt.Sprintf("s%d-%03d", sh, i)
					to := fmt.Sprintf("1555%d%06d", sh, i%10)
					body := fmt.Sprintf(`{"messaging_product":"whatsapp","recipient_type":"individual","to":%q,"type":"text","text":{"body":"%s"},"biz_opaque_callback_data":%q}`, to, id, id)
					pending = append(pending, Outgoing{ID: id, To: to, Body: []byte(body)})
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					for len(pending) > 0 && time.Since(start) < time.Minute {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						res := e.Send(ctx, pending)
						cancel()
						var rest []Outgoing
						for i, r := range res {
							switch r.Outcome {
							case Failed:
								t.Errorf("%s failed: %v", r.ID, r.Err)
							case Later:
								rest = append(rest, pending[i])
							}
						}
						pending = rest
					}
					if len(pending) > 0 {
						t.Errorf("shard %d: %d messages unsent after a minute", sh, len(pending))
					}
				}()
			}
			wg.Wait()
			took := time.Since(start)
			st := gs.Snapshot()
			throttled := 0
			for _, r := range st.Requests {
				if r.Code == graphapi.CodeThroughput {
					throttled++
				}
			}
			last := map[string]string{}
			for _, m := range st.Messages {
				if p, ok := last[m.To]; ok && strings.Compare(m.Opaque, p) < 0 {
					t.Errorf("recipient %s got %s after %s", m.To, m.Opaque, p)
				}
				last[m.To] = m.Opaque
			}
			t.Logf("%s: %d messages in %v, %d requests, %d answered 130429", c.name, len(st.Messages), took.Round(time.Millisecond), len(st.Requests), throttled)
			if len(st.Messages) != 2*perShard {
				t.Fatalf("server took %d messages, want %d", len(st.Messages), 2*perShard)
			}
			if c.throttle != (throttled > 0) {
				t.Fatalf("%d answers 130429 (want some: %v)", throttled, c.throttle)
			}
		})
	}
}
