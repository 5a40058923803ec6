package events_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim/claimtest"
	"github.com/multiconnect/multiconnect/coreapp/internal/events"
	"github.com/multiconnect/multiconnect/coreapp/internal/media"
	"github.com/multiconnect/multiconnect/coreapp/internal/webhooks"
	"github.com/multiconnect/multiconnect/plugins/simnet"
	"github.com/multiconnect/multiconnect/plugins/simnet/simnettest"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// TestRefusedEventsAreNotOvertaken runs the event path on real parts (the
// simulated network in process, the transport-simnet plugin as its own
// process, the claim holder and the callback writer against a private
// MariaDB, wired as the coreapp wires them) through a refusal that keeps
// the plugin's connection: for a moment shard_map names another epoch for
// the shard (the test writes it; in production a batch whose write fails
// or times out is refused the same way) while the holder, which renews only
// every 60 s here, keeps its connection, so the writer's fence refuses the
// events that arrive meanwhile; then shard_map names the holder's epoch
// again, and the connection goes on. This is the same
// case for the writer as a holder flap whose step-down the plugin did not
// confirm: later events of that connection must not be stored before the
// refused ones (the webhook delivers in callbacks.seq order), and the
// refused ones must come again without waiting for some unrelated next
// connection: every event ends up stored once, in the network's order, and
// acknowledged.
func TestRefusedEventsAreNotOvertaken(t *testing.T) {
	logw := newTestWriter(t) // first, so it stops last
	bin := simnettest.Plugin(t)
	logger := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	net1 := simnettest.Network(t, simnet.Config{Keepalive: time.Second, Logger: logger.With("who", "simnet")})

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := logger.With("who", "coreapp")
	// A renewal every 60 s: the holder's own statements stay out of the
	// refusal below, so only the writer's fence meets it.
	rig := claimtest.New(t, ctx, claimtest.Options{DBName: "eventorder", Plugin: bin, Log: log,
		Settings: `{"heartbeat_interval":60,"unhealthy_interval":300,"callback_persist":true,
		"webhooks":{"url":"http://127.0.0.1:1/hook"},"media":{"auto_download":[]}}`})
	db, cache, plugins, holder, dbError := rig.DB, rig.Settings, rig.Plugins, rig.Holder, rig.DBError
	store, err := media.New(media.Deps{DB: db, Log: log, Plugins: plugins, DBError: dbError}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// The dispatcher is not run: the test reads what was stored.
	dispatcher := webhooks.New(webhooks.Deps{DB: db, Log: log, Settings: cache, Claim: holder, DBError: dbError,
		Metrics: webhooks.Metrics{CallbacksDelivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "cd"}),
			WebhookFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "wf"})}})
	redeliveries := prometheus.NewCounter(prometheus.CounterOpts{Name: "rd"})
	writer := events.New(events.Deps{DB: db, Log: log, Settings: cache, Plugins: plugins, Claim: holder, Media: store,
		Dispatcher: dispatcher, CallbacksStored: prometheus.NewCounter(prometheus.CounterOpts{Name: "cs"}),
		Redeliveries: redeliveries, DBError: dbError})
	go writer.Subscribe(ctx)
	go writer.Run(ctx)
	// Before the plugin is killed: the holder steps down and hands back.
	rig.Run(t, ctx, cancel)
	inject := func(from, n int) {
		for i := from; i < from+n; i++ {
			if _, _, err := net1.Inject(simnet.Inbound{Shard: 0, Recipient: "15550100001",
				Payload: fmt.Appendf(nil, `{"type":"text","text":{"body":"m%d"}}`, i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	shard0 := func() simnet.ShardState {
		for _, s := range net1.Shards() {
			if s.Shard == 0 {
				return s
			}
		}
		return simnet.ShardState{Shard: -1}
	}
	stored := func() (n int) {
		if err := db.QueryRow(`SELECT COUNT(*) FROM callbacks`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	settled := func(total int, within time.Duration) bool {
		for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if s := shard0(); s.UnackedEvents == 0 && s.PushedEvents >= total && stored() == total {
				return true
			}
		}
		return false
	}

	const n1, n2, n3 = 20, 20, 20
	inject(0, n1)
	if !settled(n1, 10*time.Second) {
		t.Fatalf("the first %d events: %d stored, network %+v", n1, stored(), shard0())
	}
	conn := shard0().Open.ID

	// The refusal: the fence fails (the shard_map row names another
	// epoch), the connection stays up, and events arrive meanwhile.
	if _, err := db.Exec(`UPDATE shard_map SET epoch = 4 WHERE shard_id = 0`); err != nil {
		t.Fatal(err)
	}
	inject(n1, n2)
	for end := time.Now().Add(5 * time.Second); shard0().PushedEvents < n1+n2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the network did not push the events sent during the refusal: %+v", shard0())
		}
	}
	select {
	case <-logw.refused:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not refuse the events that came while the fence failed")
	}
	if got := stored(); got != n1 {
		t.Fatalf("%d callbacks stored while the fence failed, want %d", got, n1)
	}

	// The fence holds again at the same epoch, on the same connection.
	if _, err := db.Exec(`UPDATE shard_map SET epoch = 3 WHERE shard_id = 0`); err != nil {
		t.Fatal(err)
	}
	if st, s := holder.Status(), shard0(); !st.Primary || !st.Connected || s.Open == nil || s.Open.ID != conn {
		t.Fatalf("the holder let go during the refusal (%+v; connection %+v, was %d): the case this test needs did not happen", st, s.Open, conn)
	}
	inject(n1+n2, n3)
	total := n1 + n2 + n3
	if !settled(total, 5*time.Second) {
		t.Errorf("acknowledgements stuck after the refusal: %d of %d stored, network %+v", stored(), total, shard0())
		// Let a new connection bring the rest, to see their order.
		plugins.With(func(tr transport.Transport, _ uint64) { _ = tr.Disconnect(ctx) })
		if !settled(total, 10*time.Second) {
			t.Fatalf("not settled after a new connection either: %d of %d stored, network %+v", stored(), total, shard0())
		}
	}

	// The refused events came again on a connection the writer asked for.
	var m dto.Metric
	if err := redeliveries.Write(&m); err != nil || m.GetCounter().GetValue() < 1 {
		t.Errorf("multiconnect_coreapp_event_redeliveries_total did not move (%v, err %v)", m.GetCounter().GetValue(), err)
	}

	rows, err := db.Query(`SELECT net_seq FROM callbacks ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var order []uint64
	for rows.Next() {
		var s uint64
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		order = append(order, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for i, s := range order {
		if s != uint64(i+1) {
			t.Fatalf("callbacks stored out of the network's order (position %d holds event %d):\n%v", i+1, s, order)
		}
	}
}

// testWriter sends logs to the test's log until the test ends (the
// goroutines it started may log a little longer). refused is closed once
// the callback writer logs that it left an event unstored.
type testWriter struct {
	t       *testing.T
	mu      sync.Mutex
	done    bool
	refused chan struct{}
}

func newTestWriter(t *testing.T) *testWriter {
	w := &testWriter{t: t, refused: make(chan struct{})}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-w.refused:
	default:
		if bytes.Contains(p, []byte(`stored=false`)) {
			close(w.refused)
		}
	}
	if !w.done {
		w.t.Log(string(p[:len(p)-min(1, len(p))]))
	}
	return len(p), nil
}
