package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/plugins/simnet"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// TestRefusedEventsAreNotOvertaken runs the event path on real parts (the
// simulated network in process, the transport-simnet plugin as its own
// process, the holder and the callback writer against a private MariaDB)
// through a holder flap that keeps the plugin's connection: the holder
// steps down without the plugin confirming the disconnect (stepDown when
// Disconnect times out), the events that arrive meanwhile are refused,
// and the same holder takes the claim again at its epoch, which the
// plugin serves on the connection it still holds. Later events of that
// connection must not be stored before the refused ones (the webhook
// delivers in callbacks.seq order), and the refused ones must come again
// without waiting for some unrelated next connection: every event ends
// up stored once, in the network's order, and acknowledged.
func TestRefusedEventsAreNotOvertaken(t *testing.T) {
	logw := newTestWriter(t) // first, so it stops last
	bin := filepath.Join(t.TempDir(), "transport-simnet")
	if out, err := exec.Command("go", "build", "-o", bin,
		"github.com/multiconnect/multiconnect/plugins/simnet/cmd/transport-simnet").CombinedOutput(); err != nil {
		t.Fatalf("build transport-simnet: %v\n%s", err, out)
	}
	logger := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	net1 := simnet.NewServer(simnet.Config{Keepalive: time.Second, Logger: logger.With("who", "simnet")})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go net1.Serve(ln) //nolint:errcheck // returns nil once closed
	t.Cleanup(func() { net1.Close() })
	t.Setenv("SIMNET_ADDR", ln.Addr().String())

	db := mariadbtest.Migrated(t, "eventorder")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := cluster.Init(ctx, db, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := settings.Patch(ctx, db, []byte(`{"heartbeat_interval":0.5,"unhealthy_interval":10,"callback_persist":true,
		"webhooks":{"url":"http://127.0.0.1:1/hook"},"media":{"auto_download":[]}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO shard_map (shard_id, node_id, incarnation, epoch, lease_expires, connect_after)
		VALUES (0, 'me:1', 7, 3, NOW(6) + INTERVAL 1 MINUTE, NOW(6))`); err != nil {
		t.Fatal(err)
	}

	c := &Coreapp{id: node.Identity{ID: "me:1", Incarnation: 7}, db: db, claimDB: db, log: logger.With("who", "coreapp"), metrics: newMetrics()}
	c.settings = settings.NewCache(db, 0, c.log)
	if err := c.settings.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	c.holder = newHolder(c)
	c.outbox = newOutbox(c)
	c.callbacks, c.dispatcher = newCallbackWriter(c), newDispatcher(c)
	if c.media, err = newMediaStore(c, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	c.plugins = &transport.Supervisor{Path: bin, Log: c.log}
	if err := c.plugins.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.plugins.Kill() })
	go c.callbacks.subscribe(ctx)
	go c.callbacks.run(ctx)

	a := assignment{shard: 0, epoch: 3}
	c.holder.take(ctx, a)
	if st := c.holder.status(); !st.Primary || !st.Connected {
		t.Fatalf("not the connected primary after take: %+v", st)
	}
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

	// The flap: stepped down, the plugin's disconnect unconfirmed (its
	// connection stays up), and events arrive meanwhile.
	c.holder.mu.Lock()
	c.holder.cur = nil
	c.holder.mu.Unlock()
	inject(n1, n2)
	for end := time.Now().Add(5 * time.Second); shard0().PushedEvents < n1+n2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the network did not push the flap's events: %+v", shard0())
		}
	}
	select {
	case <-logw.refused:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not refuse the events that came while not primary")
	}
	if got := stored(); got != n1 {
		t.Fatalf("%d callbacks stored while not primary, want %d", got, n1)
	}

	// The same holder takes the claim again at its epoch; the plugin
	// serves it on the connection it held all along.
	c.holder.take(ctx, a)
	if st := c.holder.status(); !st.Primary || !st.Connected {
		t.Fatalf("not the connected primary after the second take: %+v", st)
	}
	if s := shard0(); s.Open == nil || s.Open.ID != conn {
		t.Fatalf("the retake made a new connection (%+v, was %d): the flap this test needs did not happen", s.Open, conn)
	}
	go c.holder.run(ctx)
	inject(n1+n2, n3)
	total := n1 + n2 + n3
	if !settled(total, 5*time.Second) {
		t.Errorf("acknowledgements stuck after the refusal: %d of %d stored, network %+v", stored(), total, shard0())
		// Let a new connection bring the rest, to see their order.
		c.plugins.With(func(tr transport.Transport, _ uint64) { _ = tr.Disconnect(ctx) })
		if !settled(total, 10*time.Second) {
			t.Fatalf("not settled after a new connection either: %d of %d stored, network %+v", stored(), total, shard0())
		}
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
		if bytes.Contains(p, []byte(`"stored"=false`)) || bytes.Contains(p, []byte(`stored=false`)) {
			close(w.refused)
		}
	}
	if !w.done {
		w.t.Log(string(p[:len(p)-min(1, len(p))]))
	}
	return len(p), nil
}
