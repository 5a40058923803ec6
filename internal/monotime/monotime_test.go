package monotime

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestNowIsClockMonotonic brackets Now between two clock_gettime system
// calls on CLOCK_MONOTONIC: it must be that clock (the one every process
// on the host shares), not a per-process offset of it.
func TestNowIsClockMonotonic(t *testing.T) {
	read := func() int64 {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			t.Fatal(err)
		}
		return ts.Nano()
	}
	for range 1000 {
		a := read()
		n := Now()
		b := read()
		if n < a || n > b {
			t.Fatalf("Now() = %d, not between CLOCK_MONOTONIC readings %d and %d", n, a, b)
		}
	}
}
