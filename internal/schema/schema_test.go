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
