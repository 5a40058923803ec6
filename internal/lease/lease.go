// Package lease tracks how long a lease held in MySQL may still be trusted
// locally. The master lease and a coreapp's shard claim both use it.
//
// The safety argument: a holder renews with `expires = NOW(6) + ttl`, judged
// on the database's clock only. It starts counting its own validity at the
// moment it *sent* the renewal, on CLOCK_MONOTONIC, so its local deadline
// (sent + ttl - margin) falls before the database's expiry however long the
// request took and however long the process is frozen afterwards; a frozen
// holder wakes up, reads the clock, and finds its lease over before it can act.
// Others take over only once NOW(6) is past the stored expiry (plus, for
// shards, the network's keepalive timeout), so the two never overlap.
package lease

import (
	"sync/atomic"
	"time"

	"github.com/multiconnect/multiconnect/internal/monotime"
)

// Margin is subtracted from every ttl to absorb clock-rate drift between
// this host and the database host (NTP slews at most 500 ppm; we allow 2%).
func Margin(ttl time.Duration) time.Duration {
	m := ttl / 50
	if m < 5*time.Millisecond {
		m = 5 * time.Millisecond
	}
	return m
}

// Validity is the local end of a lease, in monotime nanoseconds; zero means
// not held. Safe for concurrent use.
type Validity struct{ until atomic.Int64 }

// Renewed records a successful renewal that was sent at monotime sentAt
// with ttl. It never moves the deadline backwards.
func (v *Validity) Renewed(sentAt int64, ttl time.Duration) {
	next := sentAt + int64(ttl-Margin(ttl))
	for {
		cur := v.until.Load()
		if cur >= next || v.until.CompareAndSwap(cur, next) {
			return
		}
	}
}

// Drop forgets the lease.
func (v *Validity) Drop() { v.until.Store(0) }

// Until is the local deadline in monotime nanoseconds (0 when not held).
func (v *Validity) Until() int64 { return v.until.Load() }

// Valid reports whether the lease may still be trusted now. Call it right
// before every action the lease guards, never cache its answer.
func (v *Validity) Valid() bool {
	u := v.until.Load()
	return u != 0 && monotime.Now() < u
}

// Remaining is how long the lease may still be trusted (<= 0 when lapsed).
func (v *Validity) Remaining() time.Duration {
	u := v.until.Load()
	if u == 0 {
		return 0
	}
	return monotime.Until(u)
}
