package caddymodule

import (
	"sync"
	"time"
)

// loginLimiter counts failed logins per client IP over a sliding window, as
// the original Webapp did (30 per hour, then 429). Attempts in flight count
// too, so a burst of parallel guesses cannot slip past the limit while their
// bcrypt comparisons run. Counts are per gateway process: behind a load
// balancer with N gateways an address gets up to N times the limit.
type loginLimiter struct {
	mu sync.Mutex
	m  *generations[string, *loginRecord]
}

type loginRecord struct {
	failures []time.Time // oldest first
	pending  int
}

// maxTrackedIPs bounds memory under a flood of distinct sources: the
// records rotate in two generations of half this, so an address is
// forgotten only after this many others were seen since it last tried,
// and a new address costs O(1) however many are tracked.
const maxTrackedIPs = 200000

func newLoginLimiter() *loginLimiter {
	return &loginLimiter{m: newGenerations[string, *loginRecord](maxTrackedIPs / 2)}
}

// begin reserves an attempt for ip. It refuses, returning how long until
// the oldest failure leaves the window, when limit failures (counting those
// in flight) happened within window.
func (l *loginLimiter) begin(ip string, limit int, window time.Duration, now time.Time) (retryAfter time.Duration, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rec, found := l.m.get(ip)
	if !found {
		rec = &loginRecord{}
		l.m.put(ip, rec)
	}
	rec.prune(now, window)
	if len(rec.failures)+rec.pending >= limit {
		if len(rec.failures) > 0 {
			return rec.failures[0].Add(window).Sub(now), false
		}
		return time.Second, false
	}
	rec.pending++
	return 0, true
}

// end settles an attempt begun for ip.
func (l *loginLimiter) end(ip string, failed bool, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rec, found := l.m.get(ip)
	if !found {
		return
	}
	rec.pending--
	if failed {
		rec.failures = append(rec.failures, now)
	}
}

func (r *loginRecord) prune(now time.Time, window time.Duration) {
	n := 0
	for n < len(r.failures) && now.Sub(r.failures[n]) >= window {
		n++
	}
	if n > 0 {
		r.failures = append(r.failures[:0], r.failures[n:]...)
	}
}

// sweep forgets addresses with no failure in the last day (the longest
// window worth keeping) and nothing in flight. It runs periodically, not
// per request.
func (l *loginLimiter) sweep(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.m.sweep(func(_ string, rec *loginRecord) bool {
		rec.prune(now, 24*time.Hour)
		return len(rec.failures) > 0 || rec.pending > 0
	})
}
