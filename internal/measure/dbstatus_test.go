package measure_test

import (
	"context"
	"testing"

	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/measure"
)

// Since counts exactly the statements sent between two reads: the read
// of the first snapshot is not one of them.
func TestDBStatusCountsStatementsBetweenReads(t *testing.T) {
	db := mariadbtest.Start(t).Open("measure")
	db.SetMaxOpenConns(1) // one connection: no pool pings between the reads
	ctx := context.Background()
	before, err := measure.ReadDBStatus(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		var one int
		if err := db.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.ExecContext(ctx, `DO 1`); err != nil {
		t.Fatal(err)
	}
	after, err := measure.ReadDBStatus(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	d := after.Since(before)
	if got := d.Statements(); got != 4 {
		t.Errorf("4 statements between the reads counted as %d (top: %s)", got, d.TopCommands(5))
	}
	if got := d.TopCommands(2); got != "select=3 do=1" {
		t.Errorf("TopCommands(2) = %q, want %q", got, "select=3 do=1")
	}
}
