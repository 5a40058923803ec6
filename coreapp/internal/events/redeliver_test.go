package events

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/internal/monotime"
	"github.com/multiconnect/multiconnect/internal/settings"
)

// holderStub is the claim holder as the writer sees it (Deps.Claim): the
// primary of one shard, connected long ago; its reconnections are counted
// and change nothing, as when the plugin keeps the connection (a
// disconnect it did not confirm, then a connect at the same epoch that
// only extends it).
type holderStub struct {
	st    claim.Status
	asked []int
}

func (h *holderStub) Status() claim.Status { return h.st }
func (h *holderStub) Fence(context.Context, *sql.Tx, claim.Status) (int, error) {
	return 0, nil
}
func (h *holderStub) Redeliver(shard int) { h.asked = append(h.asked, shard) }

// A cursor stopped on a connection that a reconnection did not replace is
// asked about again, with a growing wait, until a new connection starts it
// over: asked once per connection, a reconnection that failed left the
// shard's events held back until some unrelated next connection.
func TestRedeliveryIsAskedAgainWhileTheConnectionStays(t *testing.T) {
	h := &holderStub{st: claim.Status{Primary: true, Shard: 0, Connected: true, ConnectedAt: monotime.Now() - int64(time.Minute)}}
	asks := prometheus.NewCounter(prometheus.CounterOpts{Name: "r"})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	w := New(Deps{Log: log, Settings: settings.NewCache(nil, 0, log), Claim: h, Redeliveries: asks})
	cur := &ackCursor{}
	cur.see("s", 1, 1, true)
	if cur.see("s", 1, 3, true) != stepStuck { // event 2 never came: a gap
		t.Fatal("a gap did not stop the cursor")
	}
	w.cursors[0] = cur
	check := func(step string, wantAsks int, wantPending bool) {
		t.Helper()
		w.redeliver()
		if len(h.asked) != wantAsks || counted(asks) != float64(wantAsks) || w.stuckPending != wantPending {
			t.Fatalf("%s: %d reconnections asked (metric %v), stuckPending %v; want %d, %v",
				step, len(h.asked), counted(asks), w.stuckPending, wantAsks, wantPending)
		}
	}
	check("stopped just now", 0, true)
	cur.stuckAt -= int64(redeliverAfter)
	check("stopped for redeliverAfter", 1, true)
	check("right after the first ask", 1, true)
	cur.askedAt -= int64(redeliverBackoff(1))
	check("the connection stayed for the first wait", 2, true)
	cur.askedAt -= int64(redeliverBackoff(2)) - int64(100*time.Millisecond)
	check("100 ms before the second wait is over", 2, true)
	cur.askedAt -= int64(100 * time.Millisecond)
	check("the connection stayed for the second wait", 3, true)
	if got := redeliverBackoff(1); got != 2*redeliverAfter {
		t.Errorf("first wait %v, want %v", got, 2*redeliverAfter)
	}
	if got := redeliverBackoff(100); got != redeliverMax {
		t.Errorf("wait after 100 asks %v, want the bound %v", got, redeliverMax)
	}

	// A new connection starts the cursor over: nothing more is asked.
	if cur.see("s", 2, 2, true) != stepAdvanced {
		t.Fatal("the new connection's first event did not move the cursor")
	}
	check("a new connection", 3, false)

	// A cursor stopped on a shard this coreapp no longer serves is not
	// its to reconnect, however long it waits.
	cur.see("s", 2, 4, true)
	cur.stuckAt -= int64(time.Minute)
	h.st.Shard = 1
	check("another shard's connection", 3, false)
	if !cur.done {
		t.Error("the cursor of a shard served no more is still looked at")
	}
}

func counted(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
