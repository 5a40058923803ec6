package main

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/mariadbtest"
)

// During a rolling upgrade to schema version 12 a coreapp of the previous
// version still renews its claim in shard_map, and a new one in
// shard_claims: the master reads a claim's expiry as the later of the two,
// so neither holder's claim looks lapsed while it renews.
func TestClaimExpiryIsTheLaterOfBothTables(t *testing.T) {
	db := mariadbtest.WithCluster(t, "claims", 2)
	ctx := context.Background()
	for _, q := range []string{
		// Shard 0: an old coreapp, renewing in shard_map only.
		`INSERT INTO shard_map (shard_id, node_id, incarnation, epoch, lease_expires, connect_after)
			VALUES (0, 'old:1', 1, 4, NOW(6) + INTERVAL 1 MINUTE, NOW(6))`,
		`INSERT INTO shard_claims (shard_id, node_id, incarnation, epoch, lease_expires)
			VALUES (0, 'old:1', 1, 4, NOW(6) - INTERVAL 1 MINUTE)`,
		// Shard 1: a new coreapp, renewing in shard_claims only.
		`INSERT INTO shard_map (shard_id, node_id, incarnation, epoch, lease_expires, connect_after)
			VALUES (1, 'new:1', 2, 6, NOW(6) - INTERVAL 1 MINUTE, NOW(6))`,
		`INSERT INTO shard_claims (shard_id, node_id, incarnation, epoch, lease_expires)
			VALUES (1, 'new:1', 2, 6, NOW(6) + INTERVAL 1 MINUTE)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	mon := &monitor{m: &Master{db: db, log: slog.Default()}}
	shards, err := mon.loadShards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) != 2 {
		t.Fatalf("%d shards loaded, want 2", len(shards))
	}
	for _, s := range shards {
		if s.leaseLeft < 50*time.Second || s.leaseLeft > time.Minute {
			t.Errorf("shard %d (%s): claim left %v, want about a minute", s.shard, s.node, s.leaseLeft)
		}
	}
}
