package main

import (
	"log/slog"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/monotime"
)

const ms = int64(time.Millisecond)

// The master's own-clock bound on how long an old holder may still be
// connected, for every way the claim can look at promotion time.
func TestHeldForJudgesOnTheMastersClock(t *testing.T) {
	const unhealthy = time.Second
	now := monotime.Now()
	mon := &monitor{m: &Master{log: slog.Default()}, claims: map[int]claimSeen{}}
	mon.observe([]shardRow{{shard: 0, epoch: 3, leaseUS: 1000}}, clockRead{sent: now - 401*ms, recv: now - 400*ms})
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
	mon.observe([]shardRow{{shard: 0, epoch: 3, leaseUS: 500}}, clockRead{sent: now - ms, recv: now})
	if seen, _ = mon.claim(0); !seen.handedBack || heldFor(seen, true, 3, 500, unhealthy) != 0 {
		t.Errorf("hand-back not remembered: %+v", seen)
	}
	mon.observe([]shardRow{{shard: 0, epoch: 3, leaseUS: 3000}}, clockRead{sent: now - ms, recv: now})
	if seen, _ = mon.claim(0); seen.handedBack || heldFor(seen, true, 3, 3000, unhealthy) < 990*time.Millisecond {
		t.Errorf("renewal after a hand-back not counted: %+v", seen)
	}
	if got := heldFor(claimSeen{epoch: 3, leaseUS: 1000, at: now - int64(5*time.Second)}, true, 3, 1000, unhealthy); got != 0 {
		t.Errorf("renewal seen 5 s ago: held for %v, want 0", got)
	}
}

// lease_expires is trusted (hold 0, only the unnoticeable step added) while
// the database's clock keeps pace with the master's; after a step either
// way the master's own clock decides.
func TestDatabaseClockStepsAreNoticed(t *testing.T) {
	const unhealthy = time.Second
	base := monotime.Now()
	read := func(atMS, rttMS, dbMS int64) clockRead {
		return clockRead{sent: base + atMS*ms, recv: base + (atMS+rttMS)*ms, dbUS: 1e9 + dbMS*1000}
	}
	if e := frameErr(read(0, 2, 1), read(250, 2, 251)); e < 4*time.Millisecond || e > 10*time.Millisecond {
		t.Errorf("clocks in step: unnoticeable error %v, want the round trips plus slack", e)
	}
	if e := frameErr(read(0, 2, 1), read(250, 2, 251+5000)); e >= 0 {
		t.Errorf("a 5 s forward step went unnoticed (%v)", e)
	}
	if e := frameErr(read(0, 2, 1), read(250, 2, 251-3000)); e >= 0 {
		t.Errorf("a 3 s backward step went unnoticed (%v)", e)
	}
	if e := frameErr(clockRead{}, read(250, 2, 251)); e >= 0 {
		t.Errorf("no earlier reading, yet trusted (%v)", e)
	}

	mon := &monitor{m: &Master{log: slog.Default()}, claims: map[int]claimSeen{}}
	mon.observe(nil, read(-500, 2, -499))
	mon.observe([]shardRow{{shard: 0, epoch: 3, leaseUS: 1000}}, read(-250, 2, -249))
	seen, ok := mon.claim(0)
	if hold, err := oldHolderEnd(seen, ok, 3, 1000, read(0, 2, 1), unhealthy); hold != 0 || err <= 0 || err > 20*time.Millisecond {
		t.Errorf("steady clock: hold %v, step error %v; want 0 and a few ms", hold, err)
	}
	if hold, _ := oldHolderEnd(seen, ok, 3, 1000, read(0, 2, 1+5000), unhealthy); hold < 700*time.Millisecond {
		t.Errorf("clock stepped 5 s before the promotion: hold %v, want what is left of unhealthy_interval on the master's clock", hold)
	}
	// A step seen by a later round also ends the trust in this claim.
	mon.observe(nil, read(-100, 2, -99+4000))
	seen, ok = mon.claim(0)
	if hold, _ := oldHolderEnd(seen, ok, 3, 1000, read(0, 2, 1+4000), unhealthy); hold < 700*time.Millisecond {
		t.Errorf("clock stepped after the claim was seen: hold %v, want the master's own bound", hold)
	}
}
