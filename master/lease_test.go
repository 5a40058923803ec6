package main

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/mariadbtest"
)

func leaseDB(t *testing.T) *sql.DB {
	db := mariadbtest.Migrated(t, "mc")
	return db
}

func TestLeaseElectsOneAndFencesTheDeposed(t *testing.T) {
	db := leaseDB(t)
	ctx := context.Background()
	a := &masterLease{db: db, own: db, holder: "a#1", addr: "a", ttl: 2 * time.Second}
	b := &masterLease{db: db, own: db, holder: "b#1", addr: "b", ttl: 2 * time.Second}
	if ok, err := a.tryAcquire(ctx); !ok || err != nil {
		t.Fatalf("a could not take a free lease: %v %v", ok, err)
	}
	if ok, err := b.tryAcquire(ctx); ok || err != nil {
		t.Fatalf("b took a held lease: %v %v", ok, err)
	}
	write := func(l *masterLease, v string) error {
		return l.fenced(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO settings (name, value, updated_at) VALUES ('probe', ?, NOW(6))
				ON DUPLICATE KEY UPDATE value = VALUES(value)`, v)
			return err
		})
	}
	if err := write(a, "a"); err != nil {
		t.Fatalf("primary's fenced write: %v", err)
	}
	// a's lease lapses on the database's clock while a still believes it
	// holds it (a long pause); b takes over.
	if _, err := db.Exec(`UPDATE master_lease SET expires_at = NOW(6) WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.tryAcquire(ctx); !ok || err != nil {
		t.Fatalf("b could not take a lapsed lease: %v %v", ok, err)
	}
	if b.epoch != a.epoch+1 {
		t.Fatalf("epochs a=%d b=%d, want b = a+1", a.epoch, b.epoch)
	}
	if !a.valid.Valid() {
		t.Fatal("test setup: a's local validity should still be running")
	}
	if err := write(a, "deposed"); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("deposed primary's write: %v, want ErrNotPrimary", err)
	}
	if lost, err := a.renew(ctx); !lost || err != nil {
		t.Fatalf("deposed primary's renewal: lost=%v err=%v", lost, err)
	}
	var v string
	db.QueryRow(`SELECT value FROM settings WHERE name = 'probe'`).Scan(&v)
	if v != "a" {
		t.Fatalf("probe = %q: the deposed primary changed something", v)
	}
}

// A takeover that slips in while a fenced transaction runs voids it: the
// lease is checked, under a shared lock, right before COMMIT. Meanwhile the
// lease row is not locked, so the holder's renewal never waits for a
// fenced transaction (which may itself wait for a stalled coreapp's lock).
func TestTakeoverDuringFencedTransactionVoidsIt(t *testing.T) {
	db := leaseDB(t)
	ctx := context.Background()
	a := &masterLease{db: db, own: db, holder: "a#1", addr: "a", ttl: 5 * time.Second}
	b := &masterLease{db: db, own: db, holder: "b#1", addr: "b", ttl: 5 * time.Second}
	if ok, _ := a.tryAcquire(ctx); !ok {
		t.Fatal("a could not take the lease")
	}
	inTx := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error)
	go func() {
		done <- a.fenced(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `INSERT INTO settings (name, value, updated_at) VALUES ('probe', 'a', NOW(6))`); err != nil {
				return err
			}
			close(inTx)
			<-release
			return nil
		})
	}()
	<-inTx
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	lost, err := a.renew(rctx)
	cancel()
	if lost || err != nil {
		t.Fatalf("renewal during a fenced transaction: lost=%v err=%v; want it through at once", lost, err)
	}
	if _, err := db.Exec(`UPDATE master_lease SET expires_at = NOW(6) WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.tryAcquire(ctx); !ok || err != nil {
		t.Fatalf("b could not take the lapsed lease during a's transaction: %v %v", ok, err)
	}
	close(release)
	if err := <-done; !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("a's fenced write after the takeover: %v, want ErrNotPrimary", err)
	}
	var n int
	db.QueryRow(`SELECT COUNT(*) FROM settings WHERE name = 'probe'`).Scan(&n)
	if n != 0 {
		t.Fatal("the deposed primary's fenced write committed")
	}
}
