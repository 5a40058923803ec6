package clustertest

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Scenario 12 of issue 12: the database's clock steps forward (an NTP step,
// a VM restored) by more than unhealthy_interval while a shard is held and
// its holder is paused: every claim lapses at once on NOW(6), though the
// holder's plugin stays connected until its own deadline, counted on its
// host's monotonic clock. The successor must not connect before that.
func TestDatabaseClockStepsForward(t *testing.T) {
	clock := filepath.Join(t.TempDir(), "faketime")
	if err := os.WriteFile(clock, []byte("+0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := New(t, Options{Coreapps: 2, DBClockFile: clock})
	iv := c.WaitConnected(0, "", 10*time.Second)
	old := c.CoreappByAddr(iv.Node)
	var before time.Time
	if err := c.SQL.QueryRow(`SELECT NOW(6)`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	// The holder is paused (its plugin is not): it cannot step down, its
	// connection lasts until the deadline its last renewal gave it.
	old.Signal(syscall.SIGSTOP)
	defer old.Signal(syscall.SIGCONT)
	const step = 5 * time.Second
	if err := os.WriteFile(clock, []byte("+5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stepped := time.Now()
	var after time.Time
	if err := c.SQL.QueryRow(`SELECT NOW(6)`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if jump := after.Sub(before); jump < step {
		t.Fatalf("the database's clock moved %v, want a step of at least %v (is libfaketime working?)", jump, step)
	}
	t.Logf("database clock stepped %v forward", after.Sub(before).Round(time.Millisecond))
	next := c.WaitConnected(0, old.Addr, 15*time.Second)
	t.Logf("shard 0 connected by %s %v after the step", next.Node, time.Since(stepped).Round(time.Millisecond))
	time.Sleep(seconds(c.Opts.Unhealthy)) // past the paused holder's deadline
	old.Signal(syscall.SIGCONT)
	c.RequireNoViolations()
}
