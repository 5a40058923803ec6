package main

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
			c.see(e.stream, e.conn, e.seq, e.seq, e.handled)
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
	c.see("s", 1, 1, 1, true)
	seq, _ := c.toAck()
	c.acked = seq
	if _, ok := c.toAck(); ok {
		t.Error("the same ack offered twice")
	}
	// A connection the plugin no longer has takes no more acks, even for
	// events of it still arriving; the next connection starts over.
	c.gone = true
	c.see("s", 1, 2, 2, true)
	if seq, ok := c.toAck(); ok {
		t.Errorf("ack %d offered on a connection that is gone", seq)
	}
	c.see("s", 2, 2, 2, true)
	if seq, ok := c.toAck(); !ok || seq != 2 {
		t.Errorf("next connection: ack %d (%v), want 2", seq, ok)
	}
}

// The place of skipped statuses (from..seq) moves the cursor over all of
// them; a stale place stops it until the network pushes the events again
// on the same connection (after a new filter), from the oldest
// unacknowledged one.
func TestAckCursorSkippedPlaces(t *testing.T) {
	var c ackCursor
	c.see("s", 1, 1, 1, true)
	if c.see("s", 1, 2, 9, true) != stepAdvanced {
		t.Fatal("a place of 2..9 after 1 did not move the cursor")
	}
	if seq, _ := c.toAck(); seq != 9 {
		t.Fatalf("ack %d after the place 2..9, want 9", seq)
	}
	c.acked = 9
	if c.see("s", 1, 11, 12, true) != stepStuck {
		t.Fatal("a place starting past the cursor (a gap) moved it")
	}
	c.see("s", 1, 13, 13, true)
	if _, ok := c.toAck(); ok {
		t.Fatal("acks offered past a gap")
	}
	// Pushed again from the oldest unacknowledged event (10).
	c.see("s", 1, 10, 10, false) // stale: not handled
	if _, ok := c.toAck(); ok {
		t.Fatal("acks offered past a stale place")
	}
	c.see("s", 1, 10, 10, true)
	c.see("s", 1, 11, 11, true)
	c.see("s", 1, 12, 13, true)
	if seq, ok := c.toAck(); !ok || seq != 13 {
		t.Fatalf("after the events came again: ack %d (%v), want 13", seq, ok)
	}
}
