package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestPickIsBelowTheEphemeralRangeAndFree picks ports and binds each: it
// must be bindable and below the range outgoing connections take source
// ports from.
func TestPickIsBelowTheEphemeralRangeAndFree(t *testing.T) {
	top := ephemeralStart()
	if top <= lowest {
		t.Fatalf("the ephemeral range starts at %d, not above %d: Pick would always fall back", top, lowest)
	}
	seen := map[int]bool{}
	for range 50 {
		p, err := Pick("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if p < lowest || p >= top {
			t.Fatalf("picked %d, want a port in [%d, %d)", p, lowest, top)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("picked %d, which cannot be bound: %v", p, err)
		}
		defer l.Close() // held: later picks must avoid it
		seen[p] = true
	}
	if len(seen) != 50 {
		t.Errorf("50 picks while the earlier ports were held gave %d distinct ports", len(seen))
	}
}
