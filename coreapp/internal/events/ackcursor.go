package events

import "github.com/multiconnect/multiconnect/internal/monotime"

// ackCursor decides how far a shard's events may be acknowledged: the
// network's Ack is cumulative, so acknowledging seq also lets go of every
// earlier event, stored or not. The cursor follows the events of one
// network connection in the order they came (each connection pushes the
// shard's unacknowledged events from the oldest, in seq order, without
// gaps) and moves only over events that were handled (stored, or not
// wanted by the webhook). An event that could not be stored, or a gap in
// the numbering (an event lost on the way), stops it for the rest of that
// connection: the network keeps everything after it and pushes it again to
// the shard's next connection, where the cursor starts over.
//
// A stopped cursor also stops what is stored: nothing of that connection
// after the place it stopped at is stored (Writer.admit), or it
// would be delivered before the events at that place, which only come
// again on the next connection. When that connection stays up (the holder
// stepped down and took the claim again at its epoch without the plugin
// letting go of it, or the fence refused a batch and then passed again),
// the writer asks the holder to reconnect
// (Writer.redeliver), so the wait for the next connection is not
// open-ended.
type ackCursor struct {
	stream string
	conn   int64
	next   uint64 // the seq expected next; everything before it is handled
	acked  uint64 // the highest seq acknowledged on conn
	stuck  bool   // a gap or an unhandled event: no further acks on conn
	gone   bool   // conn is no longer the plugin's current one: no acks
	// stuckAt is the monotime the cursor stopped at. asks counts the
	// reconnections asked for since, askedAt is the monotime of the last
	// (Writer.redeliver), and done: no more are asked on conn (it is not
	// this coreapp's to reconnect).
	stuckAt int64
	asks    int
	askedAt int64
	done    bool
}

// cursorStep is what see found about one event.
type cursorStep int

const (
	stepAdvanced  cursorStep = iota // the cursor moved over it
	stepDuplicate                   // before the cursor: handled already
	stepStuck                       // the cursor stopped (now or earlier)
)

// see records one event of the shard, in arrival order; handled says
// whether it was stored (or deliberately not). A new stream or connection
// starts the cursor over at its first event.
func (c *ackCursor) see(stream string, conn int64, seq uint64, handled bool) cursorStep {
	if c.stream != stream || c.conn != conn {
		*c = ackCursor{stream: stream, conn: conn, next: seq}
	}
	switch {
	case seq < c.next:
		return stepDuplicate
	case c.stuck:
		return stepStuck
	case seq == c.next && handled:
		c.next++
		return stepAdvanced
	default:
		c.stuck, c.stuckAt = true, monotime.Now()
		return stepStuck
	}
}

// toAck returns the seq to acknowledge now, if the cursor moved past the
// last acknowledgement.
func (c *ackCursor) toAck() (uint64, bool) {
	if c.gone || c.next == 0 || c.next-1 <= c.acked {
		return 0, false
	}
	return c.next - 1, true
}
