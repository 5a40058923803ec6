package events

import "testing"

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
