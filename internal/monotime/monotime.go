// Package monotime reads CLOCK_MONOTONIC. Unlike the monotonic reading
// hidden inside Go's time.Time, its value is comparable between processes on
// one host, so a coreapp can hand its transport plugin an absolute deadline
// that stays correct however long either process is frozen in between.
package monotime

import (
	"time"
	_ "unsafe" // for go:linkname
)

// nanotime is the runtime's clock: CLOCK_MONOTONIC read through the vDSO,
// as time.Now's monotonic reading is before the time package subtracts its
// per-process start. The runtime keeps this name and signature for
// linkname on purpose (go.dev/issue/67401). unix.ClockGettime, used
// before, is a real system call: the claim's validity is checked on every
// accepted message, and those calls were 3 % of a loaded coreapp's CPU.
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

// Now returns CLOCK_MONOTONIC in nanoseconds.
func Now() int64 { return nanotime() }

// Until returns how long until the monotonic instant t (negative if past).
func Until(t int64) time.Duration { return time.Duration(t - Now()) }
