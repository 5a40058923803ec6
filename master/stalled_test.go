package main

import (
	"context"
	"database/sql"
	"log/slog"
	"testing"
	"time"
)

// A transaction holding locks whose client has been silent for a second is
// ended; a busy one (silent for less), one holding no locks, and the
// master's own session are not. Both ways of measuring silence are tried:
// MariaDB's TIME_MS and the whole seconds MySQL 8 offers.
func TestKillStalledEndsOnlyStalledLockHolders(t *testing.T) {
	db := leaseDB(t)
	ctx := context.Background()
	m := &Master{db: db, log: slog.Default()}
	for _, bySeconds := range []bool{false, true} {
		m.stalledBySeconds.Store(bySeconds)
		// open starts a transaction on its own connection; locking takes a
		// row lock (as a coreapp's fence does), otherwise it only reads.
		open := func(locking bool) (*sql.Conn, *sql.Tx) {
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			tx, err := conn.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			q := `SELECT COUNT(*) FROM master_lease`
			if locking {
				q += ` LOCK IN SHARE MODE`
			}
			var n int
			if err := tx.QueryRowContext(ctx, q).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return conn, tx
		}
		stalledConn, stalledTx := open(true)
		readerConn, readerTx := open(false)
		wait := stalledAfter + 100*time.Millisecond
		if bySeconds {
			wait = 2*time.Second + 100*time.Millisecond
		}
		time.Sleep(wait)
		busyConn, busyTx := open(true) // silent for far less than a second
		n, err := m.killStalled(ctx)
		if err != nil {
			t.Fatalf("bySeconds=%v: %v", bySeconds, err)
		}
		if n != 1 {
			t.Errorf("bySeconds=%v: ended %d transactions, want only the stalled lock holder", bySeconds, n)
		}
		if err := stalledTx.Commit(); err == nil {
			t.Errorf("bySeconds=%v: the stalled transaction could still commit", bySeconds)
		}
		if err := busyTx.Commit(); err != nil {
			t.Errorf("bySeconds=%v: a busy transaction was ended: %v", bySeconds, err)
		}
		if err := readerTx.Commit(); err != nil {
			t.Errorf("bySeconds=%v: a transaction holding no locks was ended: %v", bySeconds, err)
		}
		for _, c := range []*sql.Conn{stalledConn, readerConn, busyConn} {
			c.Close()
		}
	}
}
