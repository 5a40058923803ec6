package accept

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/coreapp/internal/outbox"
	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/node"
)

// TestInsertFencedIsItsOwnFence runs the one-statement group commit against
// a real MariaDB: it stores the batch only while this coreapp holds the
// shard at its epoch, under the shard count the recipients were checked
// against, and a promotion holding the shard_map row makes it wait and
// then store nothing. (The claim's expiry is not the fence's: see fence.)
func TestInsertFencedIsItsOwnFence(t *testing.T) {
	db := mariadbtest.WithCluster(t, "fenced", 1)
	ctx := context.Background()
	if _, err := db.Exec(`INSERT INTO shard_map (shard_id, node_id, incarnation, epoch, lease_expires, connect_after)
		VALUES (0, 'me:1', 7, 3, NOW(6) + INTERVAL 1 MINUTE, NOW(6))`); err != nil {
		t.Fatal(err)
	}
	a := New(Deps{DB: db, ID: node.Identity{ID: "me:1", Incarnation: 7}, Outbox: outbox.New(outbox.Deps{})})
	held := claim.Status{Primary: true, Shard: 0, Epoch: 3, Connected: true}
	batch := func(n int) []*acceptReq {
		var b []*acceptReq
		for i := range n {
			msg, bad := parseMessage(fmt.Appendf(nil, `{"to":"1555010%04d","text":{"body":"m%d"}}`, i, i))
			if bad != nil {
				t.Fatal(bad.details)
			}
			b = append(b, &acceptReq{msg: msg})
		}
		return b
	}
	count := func() (n int) {
		if err := db.QueryRow(`SELECT COUNT(*) FROM messages`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	results, rows, stored, err := a.insertFenced(ctx, held, batch(3), 1)
	if err != nil || !stored || len(rows) != 3 || count() != 3 {
		t.Fatalf("claim held: stored %v, %d rows handed over, %d in the table, err %v", stored, len(rows), count(), err)
	}
	for i, r := range results {
		var to string
		if err := db.QueryRow(`SELECT recipient FROM messages WHERE id = ? AND state = 0`, r.id).Scan(&to); err != nil || rows[i].ID() != r.id {
			t.Fatalf("result %d (%s) not stored as handed over (%s): %v", i, r.id, rows[i].ID(), err)
		}
	}
	for name, tc := range map[string]struct {
		st     claim.Status
		shards int
	}{
		"another epoch":       {claim.Status{Primary: true, Shard: 0, Epoch: 2}, 1},
		"another shard count": {held, 2},
	} {
		if _, _, stored, err := a.insertFenced(ctx, tc.st, batch(2), tc.shards); err != nil || stored || count() != 3 {
			t.Errorf("%s: stored %v, %d in the table (want 3), err %v", name, stored, count(), err)
		}
	}

	// A promotion locks the shard_map row, moves the epoch and commits:
	// an insert that started meanwhile waits for it and stores nothing.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`SELECT epoch FROM shard_map WHERE shard_id = 0 FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	done := make(chan bool, 1)
	go func() {
		_, _, stored, err := a.insertFenced(ctx, held, batch(1), 1)
		if err != nil {
			t.Error(err)
		}
		done <- stored
	}()
	select {
	case stored := <-done:
		t.Fatalf("the insert did not wait for the promotion's lock (stored %v)", stored)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := tx.Exec(`UPDATE shard_map SET epoch = 4, node_id = 'other:1' WHERE shard_id = 0`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if stored := <-done; stored || count() != 3 {
		t.Fatalf("after the promotion: stored %v, %d in the table (want 3)", stored, count())
	}
}
