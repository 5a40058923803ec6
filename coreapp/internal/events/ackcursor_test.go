package events

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// The cumulative ack never covers an event that was not handled: it stops
// at a gap in the numbering and at an event that could not be stored, for
// the rest of that connection, and starts over with the next connection
// (which the network begins at its oldest unacknowledged event).
func TestAckCursor(t *testing.T) {
	type ev struct {
		stream  string
		conn    int64
		seq     uint64
		handled bool
	}
	cases := []struct {
		name   string
		events []ev
		want   uint64 // 0: nothing to acknowledge
	}{
		{"contiguous", []ev{{"s", 1, 5, true}, {"s", 1, 6, true}, {"s", 1, 7, true}}, 7},
		{"gap", []ev{{"s", 1, 1, true}, {"s", 1, 2, true}, {"s", 1, 4, true}, {"s", 1, 5, true}}, 2},
		{"unstored then stored", []ev{{"s", 1, 1, true}, {"s", 1, 2, false}, {"s", 1, 3, true}}, 1},
		{"first unstored", []ev{{"s", 1, 1, false}, {"s", 1, 2, true}}, 0},
		{"duplicates", []ev{{"s", 1, 1, true}, {"s", 1, 2, true}, {"s", 1, 1, true}, {"s", 1, 3, true}}, 3},
		{"next connection starts over", []ev{{"s", 1, 1, true}, {"s", 1, 2, false}, {"s", 1, 3, true},
			{"s", 2, 2, true}, {"s", 2, 3, true}}, 3},
		{"new stream starts over", []ev{{"s", 1, 9, true}, {"t", 1, 1, true}}, 1},
	}
	for _, tc := range cases {
		var c ackCursor
		for _, e := range tc.events {
			c.see(e.stream, e.conn, e.seq, e.handled)
		}
		got, ok := c.toAck()
		if !ok {
			got = 0
		}
		if got != tc.want {
			t.Errorf("%s: ack %d, want %d", tc.name, got, tc.want)
		}
	}
	// Once acknowledged, the same position is not sent again.
	var c ackCursor
	c.see("s", 1, 1, true)
	seq, _ := c.toAck()
	c.acked = seq
	if _, ok := c.toAck(); ok {
		t.Error("the same ack offered twice")
	}
	// A connection the plugin no longer has takes no more acks, even for
	// events of it still arriving; the next connection starts over.
	c.gone = true
	c.see("s", 1, 2, true)
	if seq, ok := c.toAck(); ok {
		t.Errorf("ack %d offered on a connection that is gone", seq)
	}
	c.see("s", 2, 2, true)
	if seq, ok := c.toAck(); !ok || seq != 2 {
		t.Errorf("next connection: ack %d (%v), want 2", seq, ok)
	}
}

// Nothing of a connection is stored past the place where its cursor
// stopped (a refused event, now or in an earlier batch, or a gap): the
// network pushes those events again from there, in order, on the next
// connection, and stored now they would be delivered before the ones they
// followed. Callbacks the coreapp made itself, and the events of a newer
// connection, are not held back.
func TestAdmitHoldsBackBehindAStoppedCursor(t *testing.T) {
	// No plugin runs: the cursors move, no acknowledgement is sent.
	w := New(Deps{Log: slog.New(slog.DiscardHandler), Plugins: &transport.Supervisor{}})
	ev := func(shard int, conn int64, seq uint64) *callback {
		return &callback{shard: shard, stream: "s", conn: conn, netSeq: seq}
	}
	names := func(cbs []*callback) (out []string) {
		for _, cb := range cbs {
			out = append(out, fmt.Sprintf("%d/%d/%d", cb.shard, cb.conn, cb.netSeq))
		}
		return out
	}
	check := func(what string, batch []*callback, stored bool, want []string) {
		t.Helper()
		got := names(w.admit(batch))
		if !slices.Equal(got, want) {
			t.Errorf("%s: stored %v, want %v", what, got, want)
		}
		w.ack(context.Background(), batch, stored)
	}
	check("in order", []*callback{ev(0, 1, 1), ev(0, 1, 2)}, true, []string{"0/1/1", "0/1/2"})
	check("a batch refused", []*callback{ev(0, 1, 3), ev(0, 1, 4)}, false, []string{"0/1/3", "0/1/4"})
	check("after the refusal", []*callback{ev(0, 1, 5), {shard: 0, kind: kindStatus}, ev(1, 1, 1)}, true,
		[]string{"0/0/0", "1/1/1"})
	check("a gap", []*callback{ev(1, 1, 2), ev(1, 1, 4), ev(1, 1, 5)}, true, []string{"1/1/2"})
	check("the next connection", []*callback{ev(0, 1, 6), ev(0, 2, 3), ev(0, 2, 4), ev(1, 2, 3)}, true,
		[]string{"0/2/3", "0/2/4", "1/2/3"})
	if seq, ok := w.cursors[0].toAck(); !ok || seq != 4 {
		t.Errorf("shard 0 acknowledges up to %d (%v), want 4", seq, ok)
	}
}
