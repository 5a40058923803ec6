package schema_test

import (
	"context"
	"errors"
	"testing"

	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/schema"
)

func TestUpgradeIsIdempotentAndRefusesNewer(t *testing.T) {
	srv := mariadbtest.Start(t)
	db := srv.Open("mc")
	ctx := context.Background()
	if v, err := schema.Version(ctx, db); err != nil || v != 0 {
		t.Fatalf("fresh database: version %d, %v; want 0, nil", v, err)
	}
	if err := schema.Bootstrap(ctx, db); err != nil {
		t.Fatal(err)
	}
	primary := func(context.Context) error { return nil }
	for i := 0; i < 2; i++ { // the second run must change nothing and not fail
		if err := schema.Upgrade(ctx, db, primary, nil); err != nil {
			t.Fatalf("upgrade %d: %v", i, err)
		}
	}
	if v, err := schema.Check(ctx, db); err != nil || v != schema.Latest() {
		t.Fatalf("after upgrade: %d, %v", v, err)
	}
	// A step run again (a master died after its DDL, before recording the
	// version) finds its indexes there and still succeeds.
	if _, err := db.Exec(`UPDATE schema_version SET version = 4`); err != nil {
		t.Fatal(err)
	}
	if err := schema.Upgrade(ctx, db, primary, nil); err != nil {
		t.Fatalf("step 5 run again: %v", err)
	}
	var idx int
	if err := db.QueryRow(`SELECT COUNT(*) FROM information_schema.statistics
		WHERE table_schema = DATABASE() AND index_name = 'messages_unsent'`).Scan(&idx); err != nil || idx != 1 {
		t.Fatalf("messages_unsent index: %d entries, %v", idx, err)
	}
	// A deposed primary applies nothing.
	if _, err := db.Exec(`UPDATE schema_version SET version = 0`); err != nil {
		t.Fatal(err)
	}
	deposed := errors.New("lease lost")
	if err := schema.Upgrade(ctx, db, func(context.Context) error { return deposed }, nil); !errors.Is(err, deposed) {
		t.Fatalf("deposed upgrade: %v, want lease lost", err)
	}
	if v, _ := schema.Version(ctx, db); v != 0 {
		t.Fatalf("deposed primary moved the version to %d", v)
	}
	if _, err := db.Exec(`UPDATE schema_version SET version = ?`, schema.Latest()+1); err != nil {
		t.Fatal(err)
	}
	if _, err := schema.Check(ctx, db); !errors.Is(err, schema.ErrTooNew) {
		t.Fatalf("newer schema: %v, want ErrTooNew", err)
	}
	if err := schema.Upgrade(ctx, db, primary, nil); !errors.Is(err, schema.ErrTooNew) {
		t.Fatalf("upgrade over newer schema: %v, want ErrTooNew", err)
	}
}

// TestClaimsMoveOutOfShardMap upgrades a version 11 database whose shards
// are held: version 12 copies each claim (holder, epoch, expiry) into
// shard_claims, so the holders' renewals find them after the upgrade, and
// run again it changes nothing.
func TestClaimsMoveOutOfShardMap(t *testing.T) {
	srv := mariadbtest.Start(t)
	db := srv.Open("mc")
	ctx := context.Background()
	primary := func(context.Context) error { return nil }
	if err := schema.Bootstrap(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := schema.Upgrade(ctx, db, primary, nil); err != nil {
		t.Fatal(err)
	}
	// As version 11 left it: no shard_claims, the claims in shard_map.
	for _, q := range []string{
		`DROP TABLE shard_claims`,
		`UPDATE schema_version SET version = 11`,
		`INSERT INTO shard_map (shard_id, node_id, incarnation, epoch, lease_expires, connect_after, renewed_at)
			VALUES (0, 'a:1', 5, 9, '2030-01-01 00:00:00.123456', '2000-01-01', '2029-12-31 23:59:59'),
			(1, NULL, 0, 0, '2000-01-01', '2000-01-01', NULL)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for i := range 2 {
		if err := schema.Upgrade(ctx, db, primary, nil); err != nil {
			t.Fatalf("upgrade %d: %v", i, err)
		}
		if i == 0 {
			if _, err := db.Exec(`UPDATE schema_version SET version = 11`); err != nil {
				t.Fatal(err)
			}
		}
	}
	type row struct {
		node          string
		inc, epoch    int64
		expires, renw string
	}
	var got []row
	rows, err := db.Query(`SELECT COALESCE(node_id, ''), incarnation, epoch, CAST(lease_expires AS CHAR), COALESCE(CAST(renewed_at AS CHAR), '') FROM shard_claims ORDER BY shard_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.node, &r.inc, &r.epoch, &r.expires, &r.renw); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	want := []row{{"a:1", 5, 9, "2030-01-01 00:00:00.123456", "2029-12-31 23:59:59.000000"}, {"", 0, 0, "2000-01-01 00:00:00.000000", ""}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("shard_claims after the upgrade: %+v, want %+v", got, want)
	}
}
