// Package monotime reads CLOCK_MONOTONIC. Unlike the monotonic reading
// hidden inside Go's time.Time, its value is comparable between processes on
// one host, so a coreapp can hand its transport plugin an absolute deadline
// that stays correct however long either process is frozen in between.
package monotime

import (
	"time"

	"golang.org/x/sys/unix"
)

// Now returns CLOCK_MONOTONIC in nanoseconds.
func Now() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("clock_gettime(CLOCK_MONOTONIC): " + err.Error()) // cannot fail on Linux
	}
	return ts.Nano()
}

// Until returns how long until the monotonic instant t (negative if past).
func Until(t int64) time.Duration { return time.Duration(t - Now()) }
