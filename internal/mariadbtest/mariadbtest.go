// Package mariadbtest gives each test a private MariaDB (see privatedb): a
// temporary data directory, a free loopback port, removed when the test
// ends. It is how every cluster test meets a real database.
package mariadbtest

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/privatedb"
	"github.com/multiconnect/multiconnect/internal/schema"
)

// Server is one running mariadbd, owned by a test.
type Server struct {
	*privatedb.Server
	t testing.TB
}

// Start boots a private server and registers its removal with t.Cleanup.
// It fails the test, naming the package to install, when mariadbd is missing.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, privatedb.Options{})
}

// StartWith is Start with options (a ClockFile, say).
func StartWith(t testing.TB, o privatedb.Options) *Server {
	t.Helper()
	srv, err := privatedb.Launch(o)
	if err != nil {
		t.Fatalf("private MariaDB (tests need a real one): %v", err)
	}
	s := &Server{Server: srv, t: t}
	t.Cleanup(func() {
		srv.Stop()
		if t.Failed() {
			t.Logf("mariadbd error log (tail):\n%s", srv.ErrorLog(2000))
		}
		srv.Remove()
	})
	return s
}

// Open returns a connection pool to database name, created if missing,
// closed when the test ends.
func (s *Server) Open(name string) *sql.DB {
	s.t.Helper()
	db, err := s.Server.Open(name)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { db.Close() })
	return db
}

// Restart kills the server (a crash: InnoDB recovers) and starts it again
// on the same port and data after down.
func (s *Server) Restart(down time.Duration) {
	s.t.Helper()
	s.Kill()
	time.Sleep(down)
	if err := s.Start(); err != nil {
		s.t.Fatalf("restart mariadbd: %v", err)
	}
}

// Migrated starts a private server and returns database name on it with the
// cluster's schema bootstrapped and upgraded to the latest version, as a
// master would leave it.
func Migrated(t testing.TB, name string) *sql.DB {
	t.Helper()
	db := Start(t).Open(name)
	ctx := context.Background()
	if err := schema.Bootstrap(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := schema.Upgrade(ctx, db, func(context.Context) error { return nil }, nil); err != nil {
		t.Fatal(err)
	}
	return db
}

// WithCluster is Migrated with the cluster row created for shards shards,
// as the primary master leaves a new cluster (no shard assigned yet).
func WithCluster(t testing.TB, name string, shards int) *sql.DB {
	t.Helper()
	db := Migrated(t, name)
	if err := cluster.Init(context.Background(), db, shards); err != nil {
		t.Fatal(err)
	}
	return db
}

// Assign makes the node (its ID and incarnation) the holder of shard at
// epoch for the next lasting, as a master's promotion leaves it: shard_map
// names the assignment and shard_claims the claim, both valid that long.
func Assign(t testing.TB, db *sql.DB, shard int, nodeID string, incarnation, epoch int64, lasting time.Duration) {
	t.Helper()
	for _, q := range []string{
		`INSERT INTO shard_map (shard_id, node_id, incarnation, epoch, lease_expires, connect_after)
			VALUES (?, ?, ?, ?, NOW(6) + INTERVAL ? MICROSECOND, NOW(6))`,
		`INSERT INTO shard_claims (shard_id, node_id, incarnation, epoch, lease_expires)
			VALUES (?, ?, ?, ?, NOW(6) + INTERVAL ? MICROSECOND)`,
	} {
		if _, err := db.Exec(q, shard, nodeID, incarnation, epoch, lasting.Microseconds()); err != nil {
			t.Fatalf("assign shard %d to %s: %v", shard, nodeID, err)
		}
	}
}
