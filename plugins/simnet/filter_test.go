package simnet

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// With a filter, the network pushes only the place of the statuses it
// names (runs of them merged), numbered without gaps among the other
// events; a new filter makes it push every event it holds again, under the
// new filter, on the same connection.
func TestFilterSkipsUnwantedStatuses(t *testing.T) {
	s, addr := testServer(t, Config{Keepalive: time.Second}, nil)
	tr := NewTransport(addr, nil)
	t.Cleanup(func() { tr.Close() })
	ctx := ctxT(t)
	skip := []string{StatusSent, StatusDelivered}
	if err := tr.FilterEvents(ctx, skip); err != nil { // before connecting: told at connect
		t.Fatal(err)
	}
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 0, Epoch: 1, Node: "a", Deadline: transport.MonoNow() + int64(20*time.Second)}); err != nil {
		t.Fatal(err)
	}
	ch, err := tr.EventBatches(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	var msgs []transport.Message
	for i := range n {
		msgs = append(msgs, transport.Message{ID: fmt.Sprintf("m%d", i), To: "15550100001", Type: "text", Body: []byte(`{"body":"x"}`)})
	}
	if _, err := tr.Send(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	// receive takes events until seq last is covered, checking that they
	// cover the numbering from first without gaps, and returns them.
	receive := func(first, last uint64) []transport.Event {
		var got []transport.Event
		next := first
		for next <= last {
			select {
			case b := <-ch:
				for _, e := range b {
					from := e.Seq
					if e.Kind == transport.EventSkipped {
						from = e.From
					}
					if from != next || e.Seq < from {
						t.Fatalf("event %+v: want one starting at seq %d", e, next)
					}
					next = e.Seq + 1
					got = append(got, e)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("nothing after seq %d", next-1)
			}
		}
		return got
	}
	got := receive(1, 3*n)
	places, reads := 0, 0
	for _, e := range got {
		switch {
		case e.Kind == transport.EventSkipped && slices.Equal(e.Skipped, skip):
			places++
		case e.Kind == transport.EventStatus && e.Status == StatusRead:
			reads++
		default:
			t.Errorf("pushed under the filter %v: %+v", skip, e)
		}
	}
	t.Logf("%d statuses pushed as %d places and %d read statuses", 3*n, places, reads)
	if reads != n || places == 0 || places > 2*n {
		t.Errorf("%d read statuses and %d places, want %d and 1..%d", reads, places, n, 2*n)
	}
	// A wider filter: everything the network holds comes again, whole.
	if err := tr.FilterEvents(ctx, nil); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, e := range receive(1, 3*n) {
		if e.Kind != transport.EventStatus {
			t.Errorf("pushed with no filter: %+v", e)
		}
		count[e.Status]++
	}
	if count[StatusSent] != n || count[StatusDelivered] != n || count[StatusRead] != n {
		t.Errorf("pushed again: %v, want %d of each", count, n)
	}
	if err := tr.Ack(ctx, 0, got[0].Conn, 3*n); err != nil {
		t.Fatal(err)
	}
	if u := s.Shards()[0].UnackedEvents; u != 0 {
		t.Errorf("%d events unacknowledged after the ack", u)
	}
}
