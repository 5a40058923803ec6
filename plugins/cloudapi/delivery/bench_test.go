package delivery

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphtest"
)

// BenchmarkEngineMySQL: what one shard's engine sends per second with its
// records in MySQL (two writes per message: the attempt before the
// request, the wamid after) to the Graph API test server on loopback,
// unlimited, in the coreapp's batches of 500.
//
//	go test -run '^$' -bench BenchmarkEngineMySQL -benchtime 1x ./plugins/cloudapi/delivery/
func BenchmarkEngineMySQL(b *testing.B) {
	db := schemaDB(b)
	gs, err := graphtest.New(graphtest.Config{PhoneNumberIDs: []string{benchPhone}, AccessToken: "bench-token", AppSecret: "bench-secret", Statuses: []string{"sent"}})
	if err != nil {
		b.Fatal(err)
	}
	defer gs.Close()
	srv := httptest.NewServer(gs)
	defer srv.Close()
	client := graph.New(graph.Config{BaseURL: srv.URL, PhoneNumberID: benchPhone, AccessToken: "bench-token", Timeout: 5 * time.Second})
	var unknown atomic.Int64
	for _, c := range []struct {
		store string
		conc  int
	}{{"mysql", 16}, {"mysql-ungrouped", 16}, {"mysql", 64}, {"memory", 16}} {
		conc := c.conc
		b.Run(fmt.Sprintf("%s_concurrency_%d", c.store, conc), func(b *testing.B) {
			var st Store = NewSQLStore(db)
			switch c.store {
			case "mysql-ungrouped":
				st = SQLStore{DB: db} // each write its own commit
			case "memory":
				// The same without MySQL: what the records cost.
				st = newMemStore()
			}
			e := NewEngine(Config{Unlimited: true, Node: "bench", Concurrency: conc}, graphPoster{client, &unknown}, st)
			const n = 3000
			var ms []Outgoing
			for i := 0; i < n; i++ {
				id := fmt.Sprintf("%s-%d-%d-%06d", c.store, conc, b.N, i)
				to := fmt.Sprintf("1555%07d", i%500)
				ms = append(ms, Outgoing{ID: id, To: to, Body: []byte(fmt.Sprintf(
					`{"messaging_product":"whatsapp","recipient_type":"individual","to":%q,"type":"text","text":{"body":"m"},"biz_opaque_callback_data":%q}`, to, id))})
			}
			b.ResetTimer()
			start := time.Now()
			for k := 0; k < n; k += 500 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				for _, r := range e.Send(ctx, ms[k:k+500]) {
					if r.Outcome != Sent {
						b.Fatalf("%s: %v %s", r.ID, r.Outcome, r.Detail)
					}
				}
				cancel()
			}
			el := time.Since(start)
			b.ReportMetric(float64(n)/el.Seconds(), "msgs/s")
			b.Logf("%s, concurrency %d: %d messages in %v: %.0f messages/s", c.store, conc, n, el.Round(time.Millisecond), float64(n)/el.Seconds())
		})
	}
}
