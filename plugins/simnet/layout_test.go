package simnet

import (
	"fmt"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// numberOn returns a number whose shard is want under n shards, skipping
// the first skip such numbers.
func numberOn(t *testing.T, want, n, skip int) string {
	t.Helper()
	for i := 0; i < 100000; i++ {
		to := fmt.Sprint(15550400000 + i)
		if s, _ := shard.For(to, n); s == want {
			if skip == 0 {
				return to
			}
			skip--
		}
	}
	t.Fatalf("no number on shard %d of %d", want, n)
	return ""
}

// nextEvents reads n pushed events or fails.
func nextEvents(t *testing.T, c *client, n int) []Event {
	t.Helper()
	var out []Event
	for len(out) < n {
		select {
		case e := <-c.events:
			out = append(out, e)
		case <-time.After(3 * time.Second):
			t.Fatalf("got %d events, want %d", len(out), n)
		}
	}
	return out
}

func held(s *Server, sh int) int {
	for _, st := range s.Shards() {
		if st.Shard == sh {
			return st.UnackedEvents
		}
	}
	return 0
}

// The network routes events by the newest layout the coreapps told: a
// shrink moves a removed shard's held events to the shard that now serves
// their recipients (pushed to its open connection, in order, renumbered
// in its stream); a stale layout (lower map version) changes nothing; a
// grow moves the moving recipients' held events, pushed or not, to their
// new shard, ahead of the ones that come later, and leaves their places
// in the old shard's numbering.
func TestLayoutMovesHeldEvents(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	moving := numberOn(t, 2, 4, 0) // shard 2 of 4, shard 0 of 2
	staying := numberOn(t, 0, 4, 0)
	c := dial(t, addr)
	if _, err := c.ConnectLayout(ctxT(t), 0, 1, "n0", transport.Layout{Shards: 4, Version: 10}); err != nil {
		t.Fatal(err)
	}
	keepPinging(t, c)
	inject := func(sh int, to, id string) {
		t.Helper()
		if _, _, err := s.Inject(Inbound{Shard: sh, ID: id, Recipient: to}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		inject(2, moving, fmt.Sprint("m", i))
	}
	inject(0, staying, "s0")
	if got := nextEvents(t, c, 1); got[0].MessageID != "s0" {
		t.Fatalf("shard 0 got %+v, want s0", got[0])
	}
	if n := held(s, 2); n != 3 {
		t.Fatalf("shard 2 holds %d events, want 3", n)
	}

	// Shrink to 2: shard 2's events come to shard 0's connection.
	if err := c.PingLayout(transport.Layout{Shards: 2, Version: 11}); err != nil {
		t.Fatal(err)
	}
	got := nextEvents(t, c, 3)
	for i, e := range got {
		if e.MessageID != fmt.Sprint("m", i) || e.Shard != 0 || e.Seq != uint64(2+i) {
			t.Errorf("event %d after the shrink: %s shard %d seq %d, want m%d shard 0 seq %d", i, e.MessageID, e.Shard, e.Seq, i, 2+i)
		}
	}
	if n := held(s, 2); n != 0 {
		t.Errorf("removed shard 2 still holds %d events", n)
	}
	// The numbers the move gave are recorded: they say where the events
	// went, not when the network emitted them.
	for _, st := range s.Shards() {
		if want := map[int]string{0: "[2 3 4]"}[st.Shard]; fmt.Sprint(st.Renumbered) != want && (want != "" || len(st.Renumbered) > 0) {
			t.Errorf("shard %d renumbered %v, want %s", st.Shard, st.Renumbered, want)
		}
	}
	// A stale word (lower version) changes nothing; an event for the
	// moved recipient follows the others to shard 0.
	if err := c.PingLayout(transport.Layout{Shards: 4, Version: 10}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	inject(2, moving, "m3")
	if e := nextEvents(t, c, 1)[0]; e.MessageID != "m3" || e.Shard != 0 {
		t.Errorf("after a stale layout: %s on shard %d, want m3 on shard 0", e.MessageID, e.Shard)
	}

	// Grow to 4 again: the moving recipient's unacknowledged events
	// (pushed to shard 0 already) move to shard 2, in order, and a later
	// one goes behind them.
	if err := c.Ack(ctxT(t), 1); err != nil { // s0 is stored
		t.Fatal(err)
	}
	if err := c.PingLayout(transport.Layout{Shards: 4, Version: 12}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	inject(0, moving, "m4")
	// Shard 0 keeps their places (seq 2-5), so its numbering has no gap
	// for its next connection; that connection gets them as "moved".
	if n := held(s, 0); n != 4 {
		t.Errorf("shard 0 holds %d events after the grow, want the 4 places of the moved ones", n)
	}
	c.Abort()
	c0 := dial(t, addr)
	if _, err := c0.ConnectLayout(ctxT(t), 0, 2, "n0", transport.Layout{Shards: 4, Version: 12}); err != nil {
		t.Fatal(err)
	}
	keepPinging(t, c0)
	for i, e := range nextEvents(t, c0, 4) {
		if e.Kind != KindMoved || e.Seq != uint64(2+i) || e.MessageID != fmt.Sprint("m", i) {
			t.Errorf("shard 0's next connection, event %d: %s %s seq %d, want the place of m%d (moved) at seq %d", i, e.Kind, e.MessageID, e.Seq, i, 2+i)
		}
	}
	// Further changes leave the places where they are; they go when
	// acknowledged.
	if err := c0.PingLayout(transport.Layout{Shards: 8, Version: 13}); err != nil {
		t.Fatal(err)
	}
	if err := c0.PingLayout(transport.Layout{Shards: 4, Version: 14}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if n := held(s, 0); n != 4 {
		t.Errorf("shard 0 holds %d events after two more changes, want its 4 places", n)
	}
	if err := c0.Ack(ctxT(t), 5); err != nil {
		t.Fatal(err)
	}
	if n := held(s, 0); n != 0 {
		t.Errorf("shard 0 holds %d events after acknowledging the places, want 0", n)
	}
	c2 := dial(t, addr)
	if _, err := c2.ConnectLayout(ctxT(t), 2, 1, "n2", transport.Layout{Shards: 4, Version: 12}); err != nil {
		t.Fatal(err)
	}
	keepPinging(t, c2)
	for i, e := range nextEvents(t, c2, 5) {
		if e.MessageID != fmt.Sprint("m", i) || e.Shard != 2 {
			t.Errorf("shard 2's event %d: %s on shard %d, want m%d on shard 2", i, e.MessageID, e.Shard, i)
		}
	}
}

// A recipient's statuses come in the order its messages reached the
// network, whichever connections sent them and however close together:
// each of 300 recipients gets a message through shard 1's connection and
// the next one through shard 0's right after (as when a re-shard leaves a
// batch in flight at the old shard and the new shard sends the next
// message); the events all go to shard 0 (one shard in the layout).
func TestStatusesInArrivalOrderAcrossConnections(t *testing.T) {
	_, addr := testServer(t, Config{StatusDelay: 2 * time.Millisecond}, nil)
	l := transport.Layout{Shards: 1, Version: 1}
	c0, c1 := dial(t, addr), dial(t, addr)
	if _, err := c0.ConnectLayout(ctxT(t), 0, 1, "n0", l); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.ConnectLayout(ctxT(t), 1, 1, "n1", l); err != nil {
		t.Fatal(err)
	}
	keepPinging(t, c0)
	keepPinging(t, c1)
	const n = 300
	got := make(chan []Event, 1)
	go func() { got <- nextEvents(t, c0, 6*n) }()
	for i := 0; i < n; i++ {
		to := fmt.Sprint(15550500000 + i)
		for j, c := range []*client{c1, c0} {
			if _, err := c.Send(ctxT(t), []Message{{ID: fmt.Sprintf("%d-%d", i, j), To: to, Type: "text", Body: []byte(`{}`)}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	pos := map[string]int{}
	for k, e := range <-got {
		pos[e.MessageID+" "+e.Status] = k
	}
	bad := 0
	for i := 0; i < n; i++ {
		for _, st := range []string{StatusSent, StatusDelivered, StatusRead} {
			if pos[fmt.Sprintf("%d-0 %s", i, st)] > pos[fmt.Sprintf("%d-1 %s", i, st)] {
				bad++
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d statuses came before the same status of the recipient's earlier message", bad, 3*n)
	}
}
