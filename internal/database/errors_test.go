package database

import (
	"fmt"
	"testing"

	"github.com/go-sql-driver/mysql"
)

// A re-shard or promotion is retried only after errors that rolled it back
// whole or never took its lock; wrapping must not hide them.
func TestLockErrorsAreRecognizedThroughWrapping(t *testing.T) {
	for _, tc := range []struct {
		num            uint16
		deadlock, busy bool
	}{{1213, true, false}, {1205, false, true}, {3572, false, true}, {1062, false, false}} {
		err := fmt.Errorf("reshard: release removed shards: %w", &mysql.MySQLError{Number: tc.num})
		if Deadlock(err) != tc.deadlock || LockBusy(err) != tc.busy {
			t.Errorf("error %d: Deadlock %v LockBusy %v, want %v %v", tc.num, Deadlock(err), LockBusy(err), tc.deadlock, tc.busy)
		}
	}
	if Deadlock(nil) || LockBusy(nil) {
		t.Error("nil is neither a deadlock nor a busy lock")
	}
}

// The first syntax error on NOWAIT turns the clause off and is reported
// once; other errors leave it on.
func TestNowaitTurnsOffOnceOnSyntaxError(t *testing.T) {
	var n Nowait
	if n.Clause() != " NOWAIT" || n.Unsupported(&mysql.MySQLError{Number: 1205}) || n.Clause() != " NOWAIT" {
		t.Fatal("NOWAIT must stay on after a lock error")
	}
	if !n.Unsupported(fmt.Errorf("promote: %w", &mysql.MySQLError{Number: 1064})) || n.Clause() != "" {
		t.Fatal("a 1064 must turn NOWAIT off and be reported")
	}
	if n.Unsupported(&mysql.MySQLError{Number: 1064}) {
		t.Fatal("reported twice")
	}
}
