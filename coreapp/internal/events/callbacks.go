// Package events turns what the network pushes through the transport
// plugin (statuses, inbound messages) and the sends it refused (from the
// outbox) into callbacks: with callback_persist it stores them in one
// fenced transaction per batch and only then acknowledges the events to
// the network (the ack cursor, ackcursor.go), so a crash loses none; then
// it hands them to the webhooks stage.
//
// It depends on Deps: the database, the settings, the plugin supervisor,
// the claim (Status, Fence, and Redeliver for a connection its ack cursor
// stopped on), the media store (FetchInbound) and the
// webhook dispatcher (Remember, Nudge).
package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/coreapp/internal/outbox"
	"github.com/multiconnect/multiconnect/coreapp/internal/webhooks"
	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/monotime"
	"github.com/multiconnect/multiconnect/internal/pause"
	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Callback kinds: a message status, or an inbound message; kindMoved
// marks an event the network moved to another shard, kindUnwanted a status
// the webhook did not want when it arrived, kindMalformed an event that
// could not be read: none is stored, all are acknowledged with the rest.
const (
	kindStatus    = webhooks.KindStatus
	kindInbound   = webhooks.KindInbound
	kindMoved     = "moved"
	kindUnwanted  = "unwanted"
	kindMalformed = "malformed"
)

// callback is one webhook notification, before or after it is stored.
type callback struct {
	shard     int    //
	netSeq    uint64 // the network's event number; 0 for ones the coreapp made
	stream    string // the network's numbering netSeq belongs to
	conn      int64  // the network connection that pushed the event
	recipient string // the contact it is about: ordering is per recipient
	kind      string
	status    string // of a status callback made here (not of loaded ones)
	payload   []byte // one status object, or {"contact":...,"message":...}
	done      chan error
	// behind: an event of a connection whose ack cursor stopped before
	// it (see admit); not stored, so it cannot overtake the events the
	// network pushes again.
	behind bool
}

const (
	callbackBatch = 500
	// callbackRetry is the pause after the database refused a batch; the
	// events stay unacknowledged meanwhile, so nothing is lost by waiting.
	callbackRetry = 200 * time.Millisecond
)

// Writer turns what the network pushes (statuses, inbound
// messages) and the sends it refused into callbacks. With callback_persist
// it stores them in one fenced transaction per batch and only then
// acknowledges the events to the network, which keeps unacknowledged
// events for the shard's next connection: a crash anywhere loses none. One
// goroutine writes, so callbacks.seq follows the network's order.
type Writer struct {
	Deps
	in      chan *callback
	cursors map[int]*ackCursor // by shard; only the run goroutine uses them
	// ackPending: some cursor moved past its last acknowledgement and
	// waits for the run loop's timer (see ackEvery).
	ackPending bool
	nowait     database.Nowait // whether the server knows FOR UPDATE NOWAIT

	// stuckPending: some cursor stopped on a connection and may need a
	// reconnection (see redeliver).
	stuckPending bool
}

// New makes the writer; Subscribe feeds it and Run writes.
func New(d Deps) *Writer {
	return &Writer{Deps: d, in: make(chan *callback, 4096), cursors: map[int]*ackCursor{}}
}

// Subscribe feeds the plugin's event stream to the writer, subscribing
// again whenever the stream ends (a plugin restart ends it). It takes the
// events in the batches they crossed in when the transport offers them.
func (w *Writer) Subscribe(ctx context.Context) {
	for ctx.Err() == nil {
		var ch <-chan []transport.Event
		err := transport.ErrNotRunning
		w.Plugins.With(func(t transport.Transport, _ uint64) { ch, err = eventBatches(ctx, t) })
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		for b := range ch {
			for _, e := range b {
				cb, err := unwanted(e, w.Settings.Get()), error(nil)
				if cb == nil {
					cb, err = fromEvent(e)
				}
				if err != nil {
					w.Log.Warn("dropping an event the network sent malformed", "shard", e.Shard, "seq", e.Seq, "err", err)
					// Its place is kept and acknowledged: a gap would stop
					// the connection's acks and, as every event after it
					// is then held back (admit), its callbacks too, on
					// every connection, as the network pushes it again.
					cb = &callback{shard: e.Shard, netSeq: e.Seq, stream: e.Stream, conn: e.Conn, kind: kindMalformed}
				}
				select {
				case w.in <- cb:
				case <-ctx.Done():
					return
				}
			}
		}
	}
}

// unwanted is a placeholder, to be acknowledged and not stored, for a
// status the webhook does not want under s (or nil): most statuses are
// sent, delivered and read, and most deployments want few of them, so
// telling them apart before building their payload saves most of an
// event's work here. write checks what it keeps against the settings of
// its own moment again, as before.
func unwanted(e transport.Event, s settings.Application) *callback {
	if e.Kind != transport.EventStatus || s.StatusCallbackWanted(e.Status) {
		return nil
	}
	return &callback{shard: e.Shard, netSeq: e.Seq, stream: e.Stream, conn: e.Conn, kind: kindUnwanted, status: e.Status}
}

// eventBatches is t's event stream in batches, one event each when t does
// not offer them.
func eventBatches(ctx context.Context, t transport.Transport) (<-chan []transport.Event, error) {
	if b, ok := t.(transport.EventBatcher); ok {
		return b.EventBatches(ctx)
	}
	events, err := t.Events(ctx)
	if err != nil {
		return nil, err
	}
	out := make(chan []transport.Event)
	go func() {
		defer close(out)
		for e := range events {
			select {
			case out <- []transport.Event{e}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// SendFailed makes failed statuses for sends the network refused and waits
// until they are stored.
func (w *Writer) SendFailed(ctx context.Context, shardID int, failed []outbox.FailedSend) error {
	now := strconv.FormatInt(time.Now().Unix(), 10)
	var waits []chan error
	for _, f := range failed {
		errs := []transport.StatusError{{Code: apierror.GenericError, Title: "Message failed to send: " + f.Reason}}
		if se, ok := transport.ParseSendError(f.Reason); ok {
			errs[0] = se // the network's own reason, in the original's codes
		}
		p, _ := json.Marshal(map[string]any{
			"id": f.ID, "status": transport.StatusFailed, "timestamp": now, "recipient_id": string(shard.Digits(f.Recipient)),
			"errors": errs,
		})
		cb := &callback{shard: shardID, recipient: string(shard.Digits(f.Recipient)), kind: kindStatus, status: transport.StatusFailed, payload: p, done: make(chan error, 1)}
		waits = append(waits, cb.done)
		select {
		case w.in <- cb:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, d := range waits {
		select {
		case err := <-d:
			if err != nil {
				return fmt.Errorf("store failed status: %w", err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// fromEvent builds the original's payload for an event.
func fromEvent(e transport.Event) (*callback, error) {
	cb := &callback{shard: e.Shard, netSeq: e.Seq, stream: e.Stream, conn: e.Conn, recipient: string(shard.Digits(e.Recipient))}
	ts := strconv.FormatInt(e.Timestamp, 10)
	switch e.Kind {
	case transport.EventStatus:
		cb.kind, cb.status = kindStatus, e.Status
		st := statusCallback{ID: e.MessageID, Status: e.Status, Timestamp: ts, RecipientID: cb.recipient}
		if len(e.Payload) > 0 {
			// What the network knows beyond the status, in the
			// original's shapes; typed, so nothing else passes through.
			// Details that do not parse are left out rather than the
			// status dropped: a dropped event would stop the shard's
			// acknowledgements at its gap.
			if err := json.Unmarshal(e.Payload, &st.StatusDetails); err != nil {
				st.StatusDetails = transport.StatusDetails{}
			}
		}
		if e.Status == transport.StatusFailed && len(st.Errors) == 0 {
			st.Errors = []transport.StatusError{{Code: apierror.GenericError, Title: "Message failed to send: the network could not deliver it"}}
		}
		cb.payload, _ = json.Marshal(st)
	case transport.EventInbound:
		cb.kind = kindInbound
		msg := map[string]any{}
		if len(e.Payload) > 0 {
			if err := json.Unmarshal(e.Payload, &msg); err != nil {
				return nil, fmt.Errorf("inbound payload: %w", err)
			}
		}
		name := ""
		if p, ok := msg["profile"].(map[string]any); ok {
			name, _ = p["name"].(string)
			delete(msg, "profile")
		}
		msg["from"], msg["id"], msg["timestamp"] = cb.recipient, e.MessageID, ts
		if _, ok := msg["type"]; !ok {
			msg["type"] = "text"
		}
		cb.payload, _ = json.Marshal(map[string]any{
			"contact": map[string]any{"profile": map[string]any{"name": name}, "wa_id": cb.recipient},
			"message": msg,
		})
	case transport.EventMoved:
		// The place of an event the network moved to another shard:
		// nothing to store, acknowledged with the rest.
		cb.kind = kindMoved
	default:
		return nil, fmt.Errorf("unknown event kind %q", e.Kind)
	}
	return cb, nil
}

// statusCallback is one status of the webhook's `statuses` array, as the
// original sent it.
type statusCallback struct {
	ID          string `json:"id"`
	Status      string `json:"status"`
	Timestamp   string `json:"timestamp"`
	RecipientID string `json:"recipient_id"`
	transport.StatusDetails
}

// Run writes what Subscribe and SendFailed queue until ctx ends.
func (w *Writer) Run(ctx context.Context) {
	// The timer sends acknowledgements held back by ack; it runs only
	// while some are pending.
	acks := time.NewTimer(ackDelay)
	acks.Stop()
	armed := false
	for {
		if w.ackPending && !armed {
			acks.Reset(ackDelay)
			armed = true
		}
		// While a cursor is stopped, look now and then whether its
		// connection needs a reconnection (redeliver).
		var recheck <-chan time.Time
		if w.stuckPending {
			recheck = time.After(redeliverAfter / 2)
		}
		var first *callback
		select {
		case <-ctx.Done():
			return
		case <-acks.C:
			armed = false
			w.sendAcks(ctx, true)
			continue
		case <-recheck:
			w.redeliver()
			continue
		case first = <-w.in:
		}
		batch := []*callback{first}
	drain:
		for len(batch) < callbackBatch {
			select {
			case cb := <-w.in:
				batch = append(batch, cb)
			default:
				break drain
			}
		}
		w.write(ctx, batch)
	}
}

// write stores (or queues in memory) what the webhook wants of batch,
// then acknowledges the batch's events.
func (w *Writer) write(ctx context.Context, batch []*callback) {
	all := batch
	batch = w.admit(batch)
	s := w.Settings.Get()
	var keep []*callback
	for _, cb := range batch {
		switch {
		case s.Webhooks.URL == "":
			// No webhook: there is nobody to tell, as in the original.
		case cb.kind == kindMoved, cb.kind == kindUnwanted, cb.kind == kindMalformed:
		case cb.kind == kindStatus && !s.WantStatus(cb.status):
		case cb.kind == kindInbound && !s.ShowSecurityNotifications && securityNotice(cb.payload): // inbound.go
		default:
			keep = append(keep, cb)
		}
	}
	// Inbound media the settings ask for are fetched before their
	// callbacks are stored, so GET /v1/media/{id} serves what a webhook
	// names (media.Store.FetchInbound).
	w.Media.FetchInbound(ctx, inboundPayloads(batch), s.Media.AutoDownload)
	// Who sent each inbound message is recorded first, webhook or not,
	// so it can be marked read (inbound.go; api's rest.go); false leaves the batch
	// unacknowledged for the shard's next holder.
	stored := w.indexInbound(ctx, batch)
	if stored && len(keep) > 0 && s.CallbackPersist {
		for {
			err := w.store(ctx, keep)
			if err == nil {
				break
			}
			if errors.Is(err, claim.ErrFenced) || ctx.Err() != nil {
				// Not ours (any more): leave the events unacknowledged
				// for the shard's next holder.
				stored = false
				break
			}
			w.DBError("store callbacks", err)
			if !pause.For(ctx, callbackRetry) {
				stored = false
				break
			}
		}
	} else if stored && len(keep) > 0 {
		w.Dispatcher.Remember(forWebhooks(keep))
	}
	var doneErr error
	if !stored {
		doneErr = claim.ErrFenced
	}
	for _, cb := range batch {
		if cb.done != nil {
			cb.done <- doneErr
		}
	}
	if stored && len(keep) > 0 {
		w.Dispatcher.Nudge()
	}
	w.ack(ctx, all, stored)
	w.redeliver()
}

// admit returns the callbacks of batch that may be stored now: all but
// the network's events that come after a place where their connection's
// ack cursor stopped (an event this writer could not store, in this batch
// or an earlier one, or a gap), which it marks behind. The network pushes
// the events from that place on again, in order, to the shard's next
// connection; stored now, the later ones would be delivered before them
// (the dispatcher follows callbacks.seq), and an event pushed again is
// stored once, so nothing is lost or doubled by leaving them for then.
// It decides on copies of the cursors: ack moves the real ones once the
// batch's fate is known.
func (w *Writer) admit(batch []*callback) []*callback {
	var sim map[int]*ackCursor
	var ok []*callback // nil until an event is held back
	for i, cb := range batch {
		if cb.netSeq != 0 {
			cur := sim[cb.shard]
			if cur == nil {
				cur = &ackCursor{}
				if real := w.cursors[cb.shard]; real != nil {
					*cur = *real
				}
				if sim == nil {
					sim = map[int]*ackCursor{}
				}
				sim[cb.shard] = cur
			}
			if cur.see(cb.stream, cb.conn, cb.netSeq, true) == stepStuck {
				cb.behind = true
				if ok == nil {
					ok = append(make([]*callback, 0, len(batch)), batch[:i]...)
				}
				continue
			}
		}
		if ok != nil {
			ok = append(ok, cb)
		}
	}
	if ok == nil {
		return batch
	}
	return ok
}

// redeliverAfter is how long a shard's ack cursor may stay stopped on a
// connection the holder still has (connected this long) before the writer
// asks for a new one.
// A flap that ended the connection needs nothing: the new connection's
// first events, pushed at once, start the cursor over well within it.
const redeliverAfter = 500 * time.Millisecond

// redeliver asks the holder to reconnect a shard whose ack cursor has
// been stopped for redeliverAfter while this coreapp is the shard's
// primary, connected for as long: then the connection it stopped on is, as far as the
// writer can tell, still the plugin's current one, and would otherwise
// hold the events from the stopping place on (unacknowledged, so the
// network's push window closes behind them) until some unrelated
// reconnection. The new connection is pushed every unacknowledged event
// again from the oldest; those stored already are stored once (the unique
// event key). A reconnection can fail to replace the connection: a plugin
// too slow to confirm the disconnect keeps it, and the connect that
// follows at the same epoch only extends it. So while the cursor stays
// stopped on the same connection it asks again, redeliverAfter × 2^asks
// after the last ask (at most redeliverMax apart): a cursor stopped for good
// would hold the shard's events back until the next unrelated reconnection,
// which at the default keepalive may be hours. It notes in stuckPending
// whether a cursor still waits to be looked at again.
func (w *Writer) redeliver() {
	w.stuckPending = false
	for sh, cur := range w.cursors {
		if !cur.stuck || cur.done || cur.gone {
			continue
		}
		st := w.Claim.Status()
		now := monotime.Now()
		stuckFor := time.Duration(now - cur.stuckAt)
		// Connected for redeliverAfter too: a connection made since the
		// cursor stopped pushes its first events at once, and they start
		// the cursor over; one that seems silent is the old one.
		ours := st.Primary && st.Shard == sh && st.Connected && now-st.ConnectedAt >= int64(redeliverAfter)
		switch {
		case (st.Primary && st.Shard != sh) || (!ours && stuckFor > 2*w.Settings.Get().Unhealthy()):
			// Not ours to reconnect: the plugin's one connection is for
			// another shard now, or the claim has lapsed in the database
			// by now, so a new claim (a new epoch) brings a new one.
			cur.done = true
			continue
		case stuckFor < redeliverAfter || !ours || (cur.asks > 0 && time.Duration(now-cur.askedAt) < redeliverBackoff(cur.asks)):
			w.stuckPending = true
			continue
		}
		cur.asks++
		cur.askedAt = now
		w.stuckPending = true // until a new connection starts the cursor over
		w.Redeliveries.Inc()
		if cur.asks == 1 {
			w.Log.Warn("events held back behind one this coreapp could not store; reconnecting so the network pushes them again in order",
				"shard", sh, "conn", cur.conn, "expected_seq", cur.next)
		} else {
			w.Log.Warn("events still held back on the same connection: the last reconnection did not replace it; reconnecting again",
				"shard", sh, "conn", cur.conn, "expected_seq", cur.next, "asks", cur.asks, "stopped_for", stuckFor.Round(time.Millisecond))
		}
		w.Claim.Redeliver(sh)
	}
}

// redeliverMax bounds the wait between two reconnections asked for one
// stopped cursor.
const redeliverMax = 30 * time.Second

// redeliverBackoff is how long after its asks-th reconnection a cursor
// still stopped on the same connection asks again: redeliverAfter doubled
// per ask, so a plugin that keeps failing is not kept reconnecting.
func redeliverBackoff(asks int) time.Duration {
	return min(redeliverAfter<<min(asks, 10), redeliverMax)
}

// Acknowledgements are cumulative, so they are sent only every ackEvery
// events per shard, or ackDelay after the first one held back: one Ack (a
// gRPC call, a network round trip) per stored batch, which under load
// holds a few events, cost more than the batch. Holding an ack back delays
// only when the network lets go of events already stored; its push window
// (simnet's is 4,096 events) is far wider than ackEvery, so it keeps
// pushing meanwhile. An event acknowledged late and pushed again to the
// shard's next connection is stored once (the unique event key).
const (
	ackEvery = 512
	ackDelay = 20 * time.Millisecond
)

// ack moves each shard's cursor over the batch's events (see ackCursor):
// only up to the highest seq below which every event was handled. It
// acknowledges at once a shard whose cursor moved ackEvery past its last
// acknowledgement, and leaves the others to the run loop's timer.
func (w *Writer) ack(ctx context.Context, batch []*callback, stored bool) {
	for _, cb := range batch {
		if cb.netSeq == 0 {
			continue // made by the coreapp, not the network's
		}
		cur := w.cursors[cb.shard]
		if cur == nil {
			cur = &ackCursor{}
			w.cursors[cb.shard] = cur
		}
		wasStuck := cur.stuck && cur.conn == cb.conn && cur.stream == cb.stream
		if cur.see(cb.stream, cb.conn, cb.netSeq, stored && !cb.behind) == stepStuck && !wasStuck {
			w.Log.Warn("events not acknowledged past a gap or an unstored event; the network pushes them again on the shard's next connection",
				"shard", cb.shard, "conn", cb.conn, "expected_seq", cur.next, "seq", cb.netSeq, "stored", stored)
		}
	}
	w.sendAcks(ctx, false)
}

// sendAcks acknowledges what each shard's cursor allows: every shard when
// all is set, else only those ackEvery past their last acknowledgement.
// It notes whether acknowledgements remain held back (ackPending).
func (w *Writer) sendAcks(ctx context.Context, all bool) {
	w.ackPending = false
	for sh, cur := range w.cursors {
		seq, ok := cur.toAck()
		if !ok {
			continue
		}
		if !all && seq-cur.acked < ackEvery {
			w.ackPending = true
			continue
		}
		w.Plugins.With(func(t transport.Transport, _ uint64) {
			// A lost ack holds back the network's next events (its push
			// window): try again a few times before leaving it to the
			// shard's next connection.
			for try := 0; try < 3; try++ {
				actx, cancel := context.WithTimeout(ctx, 2*time.Second)
				err := t.Ack(actx, sh, cur.conn, seq)
				cancel()
				if err == nil {
					cur.acked = seq
					return
				}
				w.Log.Debug("could not acknowledge events", "shard", sh, "conn", cur.conn, "seq", seq, "err", err)
				if errors.Is(err, transport.ErrNotConnected) {
					// Not the current connection (any more): the network
					// pushes these events again to the next one, where
					// the cursor starts over, and the unique event key
					// stores them once. Nothing more to acknowledge here.
					cur.gone = true
					return
				}
				if !pause.For(ctx, 100*time.Millisecond) {
					return
				}
			}
			w.ackPending = true // the timer tries again
		})
	}
}

// store inserts callbacks under the shard claim: after a failover only the
// new holder adds callbacks, so the dispatcher never sees one appear
// behind a later one it already delivered.
//
// Each callback goes to its recipient's shard under the shard count this
// transaction reads (with the cluster row, share-locked by the fence), not
// to the shard whose connection brought it. They differ only for events
// the network pushed to this shard before it learned of a re-shard that
// moved their recipient away: stored here, they would be delivered by this
// shard's dispatcher, in no order against the recipient's newer callbacks,
// which the network now sends to the new shard (README, "Changing the
// shard count online"). Stored there, the recipient's shard delivers them
// in its seq order.
//
// A row for another shard is written under the cluster row locked FOR
// UPDATE: that waits for every other callback or accept transaction (they
// share-lock it) and holds new ones back until commit, so this row's seq
// is committed before any larger seq of that shard. Otherwise its
// dispatcher, which loads only past the last seq it loaded, could pass
// over it. Such rows are rare (a re-shard's stragglers). The lock is asked
// for with NOWAIT and tried again every foreignRetry while busy: a request
// queued for it would hold every accept behind it, for as long as a frozen
// holder of the share lock stays frozen.
func (w *Writer) store(ctx context.Context, cbs []*callback) error {
	err := w.storeTx(ctx, cbs, false)
	for try := 1; errors.Is(err, errForeign) || (try > 1 && database.LockBusy(err)); try++ {
		if try > foreignTries || (try > 1 && !pause.For(ctx, foreignRetry)) {
			return err
		}
		err = w.storeTx(ctx, cbs, true)
	}
	return err
}

const (
	foreignRetry = 20 * time.Millisecond
	foreignTries = 50 // then the writer's own retry, after callbackRetry
)

// errForeign: the batch holds callbacks of another shard; storeTx must run
// again with the cluster row locked for update.
var errForeign = errors.New("callbacks for another shard")

func (w *Writer) storeTx(ctx context.Context, cbs []*callback, exclusive bool) error {
	st := w.Claim.Status()
	if !st.Primary {
		return claim.ErrFenced
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tx, err := w.DB.BeginTx(qctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if exclusive {
		if _, err := tx.ExecContext(qctx, `SELECT shards FROM cluster WHERE id = 1 FOR UPDATE`+w.nowait.Clause()); err != nil {
			if w.nowait.Unsupported(err) {
				// MySQL 5.7 has no NOWAIT: wait (up to the session's
				// innodb_lock_wait_timeout) instead.
				w.Log.Warn("the server does not know FOR UPDATE NOWAIT (MySQL 5.7): callbacks stored for another shard wait for the cluster row")
			}
			return fmt.Errorf("lock the cluster row: %w", err)
		}
	}
	shards, err := w.Claim.Fence(qctx, tx, st)
	if err != nil {
		return err
	}
	var sb strings.Builder
	// An event pushed again is stored once: (shard_id, net_stream, net_seq)
	// is unique. The stream is part of the key because a network's
	// numbering can start again (a restart): keyed by seq alone, its new
	// events would be ignored as copies of old ones.
	sb.WriteString(`INSERT IGNORE INTO callbacks (shard_id, net_stream, net_seq, recipient, kind, payload, created_at) VALUES `)
	args := make([]any, 0, len(cbs)*6)
	n := 0
	for _, cb := range cbs {
		if cb.shard != st.Shard {
			continue // an event of a shard we held before; its holder gets it again
		}
		to := st.Shard
		if s, err := shard.For(cb.recipient, shards); err == nil {
			to = s
		}
		var ns any
		if cb.netSeq != 0 {
			ns = cb.netSeq
		}
		if to != st.Shard {
			if !exclusive {
				return errForeign
			}
			// Its number is this shard's stream's, not the other
			// shard's: kept, it could collide with one of that shard's
			// own events there. Without it a copy pushed again is stored
			// again (delivered at least once).
			ns = nil
		}
		if n > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`(?,?,?,?,?,?,NOW(6))`)
		args = append(args, to, cb.stream, ns, cb.recipient, cb.kind, cb.payload)
		n++
	}
	if n == 0 {
		return claim.ErrFenced
	}
	if _, err := tx.ExecContext(qctx, sb.String(), args...); err != nil {
		return fmt.Errorf("insert %d callbacks: %w", n, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit %d callbacks: %w", n, err)
	}
	w.CallbacksStored.Add(float64(n))
	return nil
}
