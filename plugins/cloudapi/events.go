package cloudapi

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/inbound"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Stream names the numbering of the events the plugin pushes: the seq of
// cloudapi_inbound, per shard.
const Stream = inbound.Stream

const (
	// defaultSafetyPoll is how often Events reads the shard's rows with
	// nothing telling it to: the gateway that stores a webhook's rows
	// wakes the shard's primary coreapp, which wakes the plugin
	// (transport.OpEventsStored), so this only bounds how long an event
	// waits when that wake is lost (the gateway died after its COMMIT,
	// its shard map named a deposed primary). Like the cluster's other
	// safety polls (settings.SafetyPoll).
	defaultSafetyPoll = 10 * time.Second
	// minReadGap spaces the reads of a stream of wakes (a webhook every
	// millisecond): what arrives meanwhile is read by the next one.
	minReadGap = 10 * time.Millisecond
	// readRetry is the wait after a read failed.
	readRetry = 200 * time.Millisecond
	// readBatch bounds one read.
	readBatch = 500
	// window is how many events may be pushed and not yet acknowledged
	// (flow control: a coreapp that stops acknowledging stops receiving).
	window = 2000
	// defaultRedeliverAfter: pushed events left unacknowledged this long
	// (the coreapp's cursor stopped at a gap or a failed store) are
	// pushed again from the oldest under a new Conn, as the next
	// connection of a connected network would.
	defaultRedeliverAfter = 10 * time.Second
)

// dbReader is the InboundReader on the cluster's database.
type dbReader struct{ db *sql.DB }

func (r dbReader) Read(ctx context.Context, shard int, afterSeq uint64, limit int) ([]transport.Event, error) {
	return inbound.Read(ctx, r.db, shard, afterSeq, limit)
}

func (r dbReader) Ack(ctx context.Context, shard int, seq uint64) error {
	return inbound.Ack(ctx, r.db, shard, seq)
}

// Events implements transport.Transport: it pushes the rows the gateway's
// webhook route stored for the shard the plugin holds a claim for, from the
// oldest unacknowledged. It reads them when woken (a new claim, a new shard
// count, OpEventsStored, room in the window) and every safety poll.
func (t *Transport) Events(ctx context.Context) (<-chan transport.Event, error) {
	if t.inbound == nil {
		return nil, errors.New("events: no database for the inbound webhooks (WA_DB_* not set for the plugin)")
	}
	ch := make(chan transport.Event, 64)
	go t.poll(ctx, ch)
	return ch, nil
}

// poll feeds ch until ctx ends.
func (t *Transport) poll(ctx context.Context, ch chan<- transport.Event) {
	defer close(ch)
	var (
		conn      int64  // the claim's stream being pushed
		after     uint64 // the last seq pushed on conn
		lastAcked uint64
		since     time.Time // when the acknowledgements last moved (or pushing began)
		lastRead  time.Time
		wait      time.Duration // 0: read at once
	)
	wake := t.wakeChan()
	for {
		if wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-wake:
			case <-timer.C:
			}
			timer.Stop()
		}
		// Taken before reading: a wake from here on (a row committed
		// after this read's snapshot) ends the next wait.
		wake = t.wakeChan()
		wait = t.safetyPoll
		if gap := minReadGap - time.Since(lastRead); gap > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(gap):
			}
		}
		c, err := t.Current()
		if err != nil {
			conn = 0
			continue
		}
		acked, ackedAt := t.ackedOf(c.Shard)
		if acked != lastAcked {
			lastAcked = acked
			if ackedAt.After(since) {
				since = ackedAt
			}
		}
		if c.Conn == conn && after > acked && time.Since(since) > t.redeliverAfter {
			// Nothing acknowledged for a while: start over from the
			// oldest unacknowledged, under a new Conn, so the coreapp's
			// cursor starts over too.
			t.log.Warn("inbound events not acknowledged; pushing them again", "shard", c.Shard, "pushed_to", after, "acked", acked)
			c.Conn = t.renewConn(c)
		}
		if c.Conn != conn {
			conn, after, since = c.Conn, 0, time.Now()
		}
		if t.windowFull(c.Shard, after) {
			// The next Ack wakes it; the redelivery check still runs.
			wait = min(wait, max(t.redeliverAfter-time.Since(since), 0)+time.Millisecond)
			continue
		}
		limit := min(readBatch, window-int(after-min(after, acked)))
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		lastRead = time.Now()
		evs, err := t.inbound.Read(rctx, c.Shard, after, limit)
		cancel()
		if err != nil {
			t.log.Warn("reading inbound webhook events failed; trying again", "shard", c.Shard, "err", err)
			wait = readRetry
			continue
		}
		for _, e := range evs {
			e.Conn, e.Stream, e.Shard = conn, Stream, c.Shard
			select {
			case ch <- e:
			case <-ctx.Done():
				return
			}
			if after <= acked {
				since = time.Now() // the first event pushed beyond what is acknowledged
			}
			after = e.Seq
		}
		if len(evs) == limit {
			wait = 0 // more may be waiting
		} else if after > acked {
			// Pushed, not yet acknowledged: look again when redelivery
			// would be due (an Ack moves since on).
			wait = min(wait, max(t.redeliverAfter-time.Since(since), 0)+time.Millisecond)
		}
	}
}

// wakeChan returns the channel the next wake closes.
func (t *Transport) wakeChan() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.wakeCh
}

// wakeLocked makes every Events poller read now.
func (t *Transport) wakeLocked() {
	close(t.wakeCh)
	t.wakeCh = make(chan struct{})
}

// eventsStored is OpEventsStored: new rows of a shard were committed.
func (t *Transport) eventsStored(body []byte) ([]byte, error) {
	var in transport.EventsStored
	if err := decodeBody(transport.OpEventsStored, body, &in); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.connected && t.claim.Shard == in.Shard {
		t.wakeLocked()
	}
	return []byte("{}"), nil
}

// windowFull reports whether as many events of shard as the window holds
// are pushed (up to after) and not acknowledged; the next Ack then wakes
// the pollers.
func (t *Transport) windowFull(shard int, after uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	acked := t.acked[shard]
	full := after > acked && after-acked >= window
	t.ackWakes = t.ackWakes || full
	return full
}

// renewConn gives the claim c a new Conn (unless another poller did).
func (t *Transport) renewConn(c Claim) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.connected && t.claim.Epoch == c.Epoch && t.claim.Shard == c.Shard && t.claim.Conn == c.Conn {
		t.claim.Conn = t.newConnLocked()
	}
	return t.claim.Conn
}

// ackedOf is the highest seq acknowledged for shard on the claim, and
// when that acknowledgement came.
func (t *Transport) ackedOf(shard int) (uint64, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.acked[shard], t.ackedAt
}

// Ack implements transport.Transport. Acknowledgements are cumulative and
// the numbering is the database's, the same for every Conn of a claim, so
// an Ack from an earlier Conn of the current claim is taken too.
func (t *Transport) Ack(ctx context.Context, shard int, conn int64, seq uint64) error {
	t.mu.Lock()
	c, err := t.currentLocked()
	first := t.claimFirstConn
	t.mu.Unlock()
	if err != nil {
		return fmt.Errorf("ack shard %d up to %d: %w", shard, seq, err)
	}
	if c.Shard != shard || conn < first || conn > c.Conn {
		return fmt.Errorf("ack shard %d conn %d: the claim is for shard %d conns %d..%d: %w", shard, conn, c.Shard, first, c.Conn, transport.ErrNotConnected)
	}
	if t.inbound == nil {
		return fmt.Errorf("ack shard %d: no database", shard)
	}
	if err := t.inbound.Ack(ctx, shard, seq); err != nil {
		return fmt.Errorf("ack shard %d up to %d: %w", shard, seq, err)
	}
	t.mu.Lock()
	if seq > t.acked[shard] {
		t.acked[shard], t.ackedAt = seq, time.Now()
		if t.ackWakes {
			t.ackWakes = false
			t.wakeLocked()
		}
	}
	t.mu.Unlock()
	return nil
}
