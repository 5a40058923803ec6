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
	// pollInterval is how often Events reads the shard's new rows: the
	// webhook route commits them, and nothing tells the plugin they are
	// there, so this is the latency the inbound path adds.
	pollInterval = 100 * time.Millisecond
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
// webhook route stored for the shard the plugin holds a claim for, polled
// every pollInterval while connected, from the oldest unacknowledged.
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
	)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c, err := t.Current()
		if err != nil {
			conn = 0
			continue
		}
		acked := t.ackedOf(c.Shard)
		if acked != lastAcked {
			lastAcked, since = acked, time.Now()
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
		if after > acked && after-acked >= window {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		evs, err := t.inbound.Read(rctx, c.Shard, after, min(readBatch, window-int(after-min(after, acked))))
		cancel()
		if err != nil {
			t.log.Warn("reading inbound webhook events failed; trying again", "shard", c.Shard, "err", err)
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
	}
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

// ackedOf is the highest seq acknowledged for shard on the claim.
func (t *Transport) ackedOf(shard int) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.acked[shard]
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
		t.acked[shard] = seq
	}
	t.mu.Unlock()
	return nil
}
