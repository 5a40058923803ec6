package accept

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/coreapp/internal/outbox"
	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/shard"
)

// heldClaim is the claim holder's fence (the real one, on the real
// database) with a fixed status: this coreapp holds st.
type heldClaim struct {
	*claim.Holder
	st claim.Status
}

func (h heldClaim) Status() claim.Status { return h.st }

// heldAcceptor is an acceptor on db for the coreapp me holding st, with the
// claim holder's real fence.
func heldAcceptor(db *sql.DB, me node.Identity, st claim.Status, dbError func(op string, err error)) *Acceptor {
	h := claim.New(claim.Deps{ID: me, DB: db, Log: slog.New(slog.DiscardHandler), Metrics: claim.Metrics{Registry: prometheus.NewRegistry()}})
	return New(Deps{DB: db, ID: me, Claim: heldClaim{h, st}, Outbox: outbox.New(outbox.Deps{}),
		Log: slog.New(slog.DiscardHandler), DBError: dbError,
		Metrics: Metrics{Accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "a"}),
			AcceptBatch:  prometheus.NewHistogram(prometheus.HistogramOpts{Name: "b"}),
			AcceptCommit: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "c"})}})
}

// outcome waits for req's answer and counts the messages stored.
func outcome(t *testing.T, db *sql.DB, req *acceptReq) (acceptResult, int) {
	t.Helper()
	var r acceptResult
	select {
	case r = <-req.done:
	case <-time.After(10 * time.Second):
		t.Fatal("no answer 10 s after the other transaction ended")
	}
	var stored int
	if err := db.QueryRow(`SELECT COUNT(*) FROM messages`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	return r, stored
}

// waitForBlockedStatement returns once a statement has run for 100 ms on
// db (the group commit, waiting for a lock: MariaDB reads a join's one-row
// tables while it plans the statement, state "Statistics", where
// INNODB_TRX does not show the wait).
func waitForBlockedStatement(t *testing.T, db *sql.DB) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		var waiting int
		if err := db.QueryRow(`SELECT COUNT(*) FROM information_schema.PROCESSLIST
			WHERE INFO IS NOT NULL AND INFO NOT LIKE '%PROCESSLIST%' AND TIME_MS > 100`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			return
		}
		if time.Now().After(end) {
			t.Fatal("the group commit never waited for the other transaction's lock")
		}
	}
}

// TestShrinkDuringAGroupCommitAnswers1018 runs a group commit of a shard
// that a shrink removes while the commit waits for the cluster row, on a
// real MariaDB, in the order the master's re-shard takes its locks: the
// cluster row for update, then the removed shards' shard_map rows. The
// group commit's fence share-locks its shard_map row before it reaches the
// cluster row, so the two transactions wait for each other and InnoDB ends
// one with error 1213. Whichever it ends, the client must get what the
// README promises for a message caught by a re-shard, 1018 (the gateway
// retries it at the recipient's new shard), not a 503 asking it to retry.
// Both group commits: the one-statement INSERT ... SELECT, and the
// transaction that a batch with an idempotency key takes, fenced last by
// the claim holder (claim.Holder.Fence).
func TestShrinkDuringAGroupCommitAnswers1018(t *testing.T) {
	t.Run("one statement", func(t *testing.T) { shrinkDuringCommit(t, false) })
	t.Run("transaction with an idempotency key", func(t *testing.T) { shrinkDuringCommit(t, true) })
}

func shrinkDuringCommit(t *testing.T, keyed bool) {
	db := mariadbtest.WithCluster(t, "shrinklock", 2)
	ctx := context.Background()
	me := node.Identity{ID: "me:1", Incarnation: 7}
	mariadbtest.Assign(t, db, 0, "other:1", 9, 3, time.Minute)
	mariadbtest.Assign(t, db, 1, me.ID, me.Incarnation, 3, time.Minute)
	st := claim.Status{Primary: true, Shard: 1, Epoch: 3, Connected: true}
	a := heldAcceptor(db, me, st, func(op string, err error) { t.Logf("DBError %s: %v", op, err) })
	a.shards.Store(2)
	to := ""
	for i := 0; to == ""; i++ {
		if s, _ := shard.For(fmt.Sprint(15550100000+i), 2); s == 1 {
			to = fmt.Sprint(15550100000 + i)
		}
	}
	msg, bad := parseMessage(fmt.Appendf(nil, `{"to":%q,"text":{"body":"caught by the shrink"}}`, to))
	if bad != nil {
		t.Fatal(bad.details)
	}

	reshard, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer reshard.Rollback()
	for _, q := range []string{`SELECT shards FROM cluster WHERE id = 1 FOR UPDATE`, `UPDATE cluster SET shards = 1 WHERE id = 1`} {
		if _, err := reshard.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	req := &acceptReq{msg: msg, done: make(chan acceptResult, 1)}
	if keyed {
		hash, err := msg.bodyHash()
		if err != nil {
			t.Fatal(err)
		}
		req.scope, req.bodyHash = idemScope("user", to, "key-1"), hash
	}
	go a.commit(ctx, []*acceptReq{req})
	// The group commit's fence now waits for the cluster row.
	waitForBlockedStatement(t, db)
	_, err = reshard.Exec(`UPDATE shard_map SET node_id = NULL, incarnation = 0 WHERE shard_id >= 1`)
	var me2 *mysql.MySQLError
	switch {
	case err == nil:
		if err := reshard.Commit(); err != nil {
			t.Fatal(err)
		}
	case errors.As(err, &me2) && me2.Number == 1213:
		// The re-shard was the victim; the master tries it again after
		// the group commit, which stored the message under the old count.
		t.Log("the re-shard was chosen as the deadlock's victim")
		reshard.Rollback()
	default:
		t.Fatal(err)
	}
	r, stored := outcome(t, db, req)
	switch {
	case r.code == 0 && r.id != "" && stored == 1:
		// Stored before the re-shard (it was the victim): a 201.
	case r.code == apierror.NotPrimaryCoreapp && stored == 0:
		t.Logf("answered %d: %s", r.code, r.details)
	default:
		t.Fatalf("answered code %d (%s), id %q, %d stored: want 1018 with nothing stored (or a 201 stored before the re-shard)", r.code, r.details, r.id, stored)
	}
}

// TestGroupCommitRetriesADeadlock makes a group commit InnoDB's victim
// with a transaction that locks in the other order (the shard_map row,
// which it changes as a promotion does, then the cluster row): the commit
// is rolled back whole, and must be tried again rather than answered 1011.
// Tried again after the promotion committed, it finds the shard
// promoted away and answers 1018, storing nothing.
func TestGroupCommitRetriesADeadlock(t *testing.T) {
	db := mariadbtest.WithCluster(t, "deadlockretry", 1)
	ctx := context.Background()
	me := node.Identity{ID: "me:1", Incarnation: 7}
	mariadbtest.Assign(t, db, 0, me.ID, me.Incarnation, 3, time.Minute)
	st := claim.Status{Primary: true, Shard: 0, Epoch: 3, Connected: true}
	var dbErrors []string
	a := heldAcceptor(db, me, st, func(op string, err error) { dbErrors = append(dbErrors, op+": "+err.Error()) })
	a.shards.Store(1)
	msg, bad := parseMessage([]byte(`{"to":"15550100001","text":{"body":"in a deadlock"}}`))
	if bad != nil {
		t.Fatal(bad.details)
	}

	deadlocks := func() (n int) {
		var name string
		if err := db.QueryRow(`SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'`).Scan(&name, &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := deadlocks()
	other, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback()
	if _, err := other.Exec(`UPDATE shard_map SET node_id = 'other:1', epoch = 4 WHERE shard_id = 0`); err != nil {
		t.Fatal(err)
	}
	req := &acceptReq{msg: msg, done: make(chan acceptResult, 1)}
	go a.commit(ctx, []*acceptReq{req})
	waitForBlockedStatement(t, db)
	// Now the commit holds the cluster row shared and waits for the
	// shard_map row: asking for the cluster row closes the cycle.
	if _, err := other.Exec(`SELECT shards FROM cluster WHERE id = 1 FOR UPDATE`); err != nil {
		t.Fatalf("the other transaction was chosen as the victim, so the test did not make the commit one: %v", err)
	}
	if err := other.Commit(); err != nil {
		t.Fatal(err)
	}
	r, stored := outcome(t, db, req)
	if n := deadlocks() - before; n != 1 {
		t.Fatalf("InnoDB counted %d deadlocks, want 1: the test did not make one", n)
	}
	if r.code != apierror.NotPrimaryCoreapp || stored != 0 {
		t.Fatalf("answered code %d (%s), %d stored: want 1018 after the retry, nothing stored (database errors: %v)", r.code, r.details, stored, dbErrors)
	}
	t.Logf("answered %d (%s); database errors on the way: %v", r.code, r.details, dbErrors)
}
