package main

import (
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/monotime"
)

// The master's own-clock bound on how long an old holder may still be
// connected, for every way the claim can look at promotion time.
func TestHeldForJudgesOnTheMastersClock(t *testing.T) {
	const unhealthy = time.Second
	now := monotime.Now()
	mon := &monitor{claims: map[int]claimSeen{}}
	mon.observe([]shardRow{{shard: 0, epoch: 3, leaseUS: 1000}}, now-int64(400*time.Millisecond))
	seen, ok := mon.claim(0)
	if !ok {
		t.Fatal("claim not observed")
	}
	if got := heldFor(seen, ok, 3, 1000, unhealthy); got < 550*time.Millisecond || got > 600*time.Millisecond {
		t.Errorf("renewal seen 400 ms ago: held for %v, want about 600 ms", got)
	}
	if got := heldFor(seen, ok, 3, 2000, unhealthy); got != unhealthy {
		t.Errorf("renewed since the last look: held for %v, want %v", got, unhealthy)
	}
	if got := heldFor(seen, ok, 4, 1000, unhealthy); got != unhealthy {
		t.Errorf("an epoch never seen: held for %v, want %v", got, unhealthy)
	}
	if got := heldFor(claimSeen{}, false, 3, 1000, unhealthy); got != unhealthy {
		t.Errorf("nothing observed: held for %v, want %v", got, unhealthy)
	}
	if got := heldFor(seen, ok, 3, 500, unhealthy); got != 0 {
		t.Errorf("lease shortened (handed back): held for %v, want 0", got)
	}
	// A shortened lease observed in a round is remembered as handed back;
	// a later renewal (longer lease) starts the count again.
	mon.observe([]shardRow{{shard: 0, epoch: 3, leaseUS: 500}}, now)
	if seen, _ = mon.claim(0); !seen.handedBack || heldFor(seen, true, 3, 500, unhealthy) != 0 {
		t.Errorf("hand-back not remembered: %+v", seen)
	}
	mon.observe([]shardRow{{shard: 0, epoch: 3, leaseUS: 3000}}, now)
	if seen, _ = mon.claim(0); seen.handedBack || heldFor(seen, true, 3, 3000, unhealthy) < 990*time.Millisecond {
		t.Errorf("renewal after a hand-back not counted: %+v", seen)
	}
	if got := heldFor(claimSeen{epoch: 3, leaseUS: 1000, at: now - int64(5*time.Second)}, true, 3, 1000, unhealthy); got != 0 {
		t.Errorf("renewal seen 5 s ago: held for %v, want 0", got)
	}
}
