// Package pause is the one wait the daemons' retry and poll loops share: a
// sleep that a shutdown cuts short, so no loop outlives its context by a
// whole retry interval.
package pause

import (
	"context"
	"time"
)

// For waits d and reports true, or reports false as soon as ctx ends.
func For(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
