package outbox_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim/claimtest"
	"github.com/multiconnect/multiconnect/coreapp/internal/outbox"
	"github.com/multiconnect/multiconnect/internal/measure"
	"github.com/multiconnect/multiconnect/plugins/simnet"
	"github.com/multiconnect/multiconnect/plugins/simnet/simnettest"
)

// rig is an outbox on real parts: a private MariaDB, the claim holder as
// the connected primary of shard 0, the transport-simnet plugin as its own
// process and the simulated network.
type rig struct {
	*claimtest.Rig
	net *simnet.Server
	box *outbox.Outbox
}

func newRig(t *testing.T, dbName string) *rig {
	t.Helper()
	bin := simnettest.Plugin(t)
	log := slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	net1 := simnettest.Network(t, simnet.Config{Keepalive: 10 * time.Second, Logger: log.With("who", "simnet")})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// Renewals every 60 s and no settings poll: the only UPDATEs and
	// SELECTs in the tests' windows are the outbox's.
	cr := claimtest.New(t, ctx, claimtest.Options{DBName: dbName, Plugin: bin, Log: log,
		Settings: `{"heartbeat_interval":60,"unhealthy_interval":300}`, Poll: time.Hour})
	box := outbox.New(outbox.Deps{DB: cr.DB, Log: log, Settings: cr.Settings, Plugins: cr.Plugins, Claim: cr.Holder,
		Failures: &noFailures{t: t}, Delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "delivered"})})
	cr.Run(t, ctx, cancel)
	ran := make(chan struct{})
	go func() { box.Run(ctx); close(ran) }()
	t.Cleanup(func() { cancel(); <-ran })
	r := &rig{Rig: cr, net: net1, box: box}
	r.scan(t) // the first scan, of the empty table, is over
	return r
}

// scan makes the outbox read the database and waits until it has: until
// MariaDB counted its SELECT. Rows committed after that are not in the
// scan's read, so they reach the network once, handed over. (A row
// committed before a scan's read and handed over after the scan had
// caught up is sent twice, from both; the outbox accepts that, and these
// tests keep out of it.)
func (r *rig) scan(t *testing.T) {
	t.Helper()
	selects := func() int64 {
		st, err := measure.ReadDBStatus(context.Background(), r.DB)
		if err != nil {
			t.Fatal(err)
		}
		return st["Com_select"]
	}
	before := selects()
	r.box.Rescan()
	for end := time.Now().Add(10 * time.Second); selects() == before; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the outbox did not read the database within 10 s of Rescan")
		}
	}
}

// commit stores n messages as a group commit does and hands them over.
func (r *rig) commit(t *testing.T, round, n int) {
	t.Helper()
	st := r.Holder.Status()
	rows := make([]outbox.Row, 0, n)
	q := `INSERT INTO messages (id, shard_id, recipient, type, body, accepted_at) VALUES (?, 0, ?, 'text', ?, NOW(6))` +
		strings.Repeat(`, (?, 0, ?, 'text', ?, NOW(6))`, n-1)
	var args []any
	for i := range n {
		id := fmt.Sprintf("m-%d-%d", round, i)
		to := fmt.Sprintf("1555%07d", round*100+i)
		body := []byte(fmt.Sprintf(`{"to":%q,"type":"text","text":{"body":"round %d"}}`, to, round))
		args = append(args, id, to, body)
		rows = append(rows, outbox.NewRow(id, to, "text", body))
	}
	if _, err := r.DB.Exec(q, args...); err != nil {
		t.Fatal(err)
	}
	r.box.Handover(st, rows)
}

func (r *rig) waitNetwork(t *testing.T, n int) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); r.net.MessageCount() < n; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the network has %d messages 10 s on, want %d", r.net.MessageCount(), n)
		}
	}
}

func (r *rig) unsent(t *testing.T) int {
	t.Helper()
	var n int
	if err := r.DB.QueryRow(`SELECT COUNT(*) FROM messages WHERE state = 0`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMarksAreWrittenTogether hands the outbox 20 group commits, each sent
// as its own batch, and counts the UPDATEs that write them as sent: one
// per batch before (40 % of the statements per message under load), now
// one per markEvery (100 ms). Every row is still written as sent soon
// after, and nothing reaches the network twice.
func TestMarksAreWrittenTogether(t *testing.T) {
	r := newRig(t, "outboxmarks")
	const rounds, per = 20, 5
	before, err := measure.ReadDBStatus(context.Background(), r.DB)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	for round := range rounds {
		r.commit(t, round, per)
		r.waitNetwork(t, (round+1)*per) // its own batch: sent before the next commit
	}
	sentAt := time.Now()
	for r.unsent(t) > 0 {
		if time.Since(sentAt) > 2*time.Second {
			t.Fatalf("%d of %d messages still unsent in the database 2 s after the network had them all", r.unsent(t), rounds*per)
		}
		time.Sleep(5 * time.Millisecond)
	}
	written := time.Since(sentAt)
	after, err := measure.ReadDBStatus(context.Background(), r.DB)
	if err != nil {
		t.Fatal(err)
	}
	updates := after["Com_update"] - before["Com_update"]
	t.Logf("%d batches of %d sent in %v; written as sent with %d UPDATEs, the last %v after the network had them",
		rounds, per, sentAt.Sub(began).Round(time.Millisecond), updates, written.Round(time.Millisecond))
	// One per markEvery (100 ms) of sending, and the last: however slow
	// the machine, fewer than one per batch.
	if most := min(int64(sentAt.Sub(began)/(100*time.Millisecond))+2, rounds-1); updates == 0 || updates > most {
		t.Errorf("%d UPDATEs wrote %d batches sent over %v as sent, want between 1 and %d", updates, rounds, sentAt.Sub(began), most)
	}
	if d := r.net.DuplicateCount(); d != 0 {
		t.Errorf("the network was sent %d messages it already had", d)
	}
}

// TestScanDoesNotResendMarkedRows makes the outbox read the database right
// after each batch, while the network's acceptance of it may not be
// written yet: the scan must write it first, or it finds those rows unsent
// and sends them again.
func TestScanDoesNotResendMarkedRows(t *testing.T) {
	r := newRig(t, "outboxscan")
	const rounds, per = 20, 5
	for round := range rounds {
		r.commit(t, round, per)
		r.waitNetwork(t, (round+1)*per)
		r.scan(t)
	}
	if d := r.net.DuplicateCount(); d != 0 {
		t.Errorf("the network was sent %d messages it already had: a scan read rows the network had taken as unsent", d)
	}
	for end := time.Now().Add(2 * time.Second); r.unsent(t) > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d messages still unsent in the database", r.unsent(t))
		}
	}
}

// noFailures is the events stage for a network that refuses nothing.
type noFailures struct {
	t  *testing.T
	mu sync.Mutex
}

func (f *noFailures) SendFailed(_ context.Context, shard int, failed []outbox.FailedSend) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t.Errorf("shard %d: the network refused %+v", shard, failed)
	return nil
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-min(1, len(p))]))
	return len(p), nil
}
