package claim

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/monotime"
	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/settings"
)

// TestRenewalDoesNotWaitForFences holds a group commit's fence open (its
// shared lock on the shard's shard_map row, which lasts until COMMIT) and
// renews the same claim beside it, on a real MariaDB: the renewal must not
// queue behind the fence (under full load it queued behind every group
// commit in flight, up to 242 ms at unhealthy_interval 0.25 s, and claims
// lapsed), while a promotion still must (that wait is the fencing).
func TestRenewalDoesNotWaitForFences(t *testing.T) {
	db := mariadbtest.WithCluster(t, "claimlock", 1)
	ctx := context.Background()
	id := node.Identity{ID: "me:1", Incarnation: 7}
	mariadbtest.Assign(t, db, 0, id.ID, id.Incarnation, 3, time.Minute)
	cache := settings.NewCache(db, 0, slog.Default())
	h := New(Deps{ID: id, DB: db, Log: slog.Default(), Settings: cache,
		Metrics: Metrics{Registry: prometheus.NewRegistry()}, DBError: func(string, error) {}})
	held := &claim{shard: 0, epoch: 3}
	held.valid.Renewed(monotime.Now(), cache.Get().Unhealthy())

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := h.Fence(ctx, tx, Status{Primary: true, Shard: 0, Epoch: 3, Connected: true}); err != nil {
		t.Fatalf("fence of a held claim: %v", err)
	}

	// A renewal while the fence is open: it must be answered at once.
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	before := held.valid.Until()
	start := time.Now()
	lost, err := h.renew(rctx, held, 0)
	took := time.Since(start)
	if err != nil || lost || took > 500*time.Millisecond {
		t.Fatalf("renewal beside an open fence: took %v, lost %v, err %v (it waited for the fence's shared lock)", took, lost, err)
	}
	if held.valid.Until() <= before {
		t.Fatalf("the renewal did not move the claim's validity")
	}

	// A promotion must still wait for the fence: it takes the shard_map
	// row for update, and the open fence holds it shared.
	ptx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ptx.Rollback()
	if _, err := ptx.Exec(`SET SESSION innodb_lock_wait_timeout = 1`); err != nil {
		t.Fatal(err)
	}
	if _, err := ptx.Exec(`SELECT epoch FROM shard_map WHERE shard_id = 0 FOR UPDATE`); err == nil {
		t.Fatal("a promotion's lock of the shard_map row did not wait for the open fence")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// The holder reports how long it has been due on the network and off it,
// counted from its last loss of the connection (or from connect_after if
// it never connected): the master replaces it on that count.
func TestStatusCountsOffFromTheLastLoss(t *testing.T) {
	now := monotime.Now()
	c := &claim{shard: 0, epoch: 3, connectAt: now - int64(time.Second)}
	c.valid.Renewed(now, time.Minute)
	h := &Holder{cur: c}
	if off := h.Status().Off; off < time.Second || off > 2*time.Second {
		t.Errorf("never connected since connect_after 1 s ago: off %v, want about 1 s", off)
	}
	c.connected = true // as setConnected does, without waking the outbox
	if st := h.Status(); !st.Connected || st.Off != 0 {
		t.Errorf("connected: %+v, want off 0", st)
	}
	h.setConnected(c, false, 0)
	if off := h.Status().Off; off > 100*time.Millisecond {
		t.Errorf("just lost the connection: off %v, want about 0", off)
	}
	c.connectAt = now + int64(time.Second)
	if st := h.Status(); st.ConnectDue || st.Off != 0 {
		t.Errorf("before connect_after: %+v, want not due, off 0", st)
	}
}
