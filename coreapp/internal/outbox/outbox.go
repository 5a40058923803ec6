// Package outbox delivers the shard's accepted messages to the network
// through the transport plugin, in the order they were accepted, one batch
// in flight: the accept stage hands it each group commit's rows (Handover)
// and it reads the database whenever it may have missed some. It marks a
// row sent only once the network answered, the batches of markEvery in one
// UPDATE; the network's refusals become failed statuses through Failures
// (the events stage).
//
// It depends on Deps: the database, the settings (the shard map version),
// the plugin supervisor, the claim (Status: it sends only as the connected
// primary) and Failures.
package outbox

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Message states in the messages table.
const (
	StateUnsent = 0
	stateSent   = 1 // the network has it (accepted or a duplicate)
	stateFailed = 2 // the network refused it; a failed status was sent
)

const (
	// sendBatch is how many messages go to the plugin in one Send at most:
	// per message gRPC calls would cap a shard at a few thousand per
	// second. A batch is also cut at transport.MaxSendBytes, so that large
	// messages never make a Send the plugin or the network cannot take.
	sendBatch = 500
	// outboxPoll is a safety net for a missed wake-up: commits nudge the
	// sender directly, and so does connecting to the network as a shard's
	// new primary (claim.Holder.setConnected), which finds the rows a previous
	// primary left at once. A failed send retries on outboxMinRetry..
	// outboxMaxRetry, not on this poll. Slow, so an idle shard costs one
	// statement per 10 s (README, "Idle cost").
	outboxPoll     = 10 * time.Second
	outboxMinRetry = 50 * time.Millisecond
	outboxMaxRetry = 2 * time.Second
	// markEvery is how long ids the network accepted may wait to be
	// written as sent, and markBatch how many: one UPDATE for the batches
	// of markEvery instead of one per batch (under load it was 40 % of
	// the statements per message). Until written, a row is unsent in the
	// database: a new holder sends it again and the network drops the copy
	// by id, as it does for a batch whose mark was lost in a crash.
	markEvery = 100 * time.Millisecond
	markBatch = 2000
)

// Outbox delivers the shard's committed messages to the network, one
// batch in flight, so messages to one recipient arrive in the order they
// were accepted. A batch that fails is sent again; the network drops the
// copies by id. Rows are marked sent only after the network answered, so a
// new primary (or this one after a plugin restart) sends again what might
// not have arrived.
//
// The rows this coreapp's group commits store are handed to it in memory
// (handover), in the order they committed, so sending them reads nothing
// back from the database. The database is read (scan: the unsent rows in
// seq order) whenever it may hold an unsent row that was not handed over:
// when a term starts (a new claim, a changed shard map, which may have
// moved rows in), after any failure (a Send, a plugin restart, a commit
// whose outcome is unknown), when too much waits in memory, and every
// outboxRescan as a safety net. A scan starts by dropping what was handed
// over, which it finds in the database, and the rows handed over during it
// wait until it has caught up.
type Outbox struct {
	Deps
	wake chan struct{}

	mu       sync.Mutex
	term     outboxTerm
	pending  []Row // handed over, in commit order, not yet sent
	pendingB int   // their bytes (MessageSize)
	// needScan: the database may hold unsent rows pending lacks; the next
	// drain starts a scan. scanning: a scan has not caught up yet.
	needScan, scanning bool
	lastScan           time.Time

	// marks are the ids the network accepted that are not yet written as
	// sent, the oldest since marksSince; only Run's goroutine uses them.
	marks      []any
	marksSince time.Time
}

// outboxTerm is what the handed-over rows belong to: rows committed under
// another claim, or before the shard map changed, are the database's.
type outboxTerm struct {
	shard      int
	epoch      int64
	mapVersion int64
}

const (
	// outboxRescan is the safety net: the outbox reads the database at
	// least this often while it is primary, whatever it was handed.
	outboxRescan = 30 * time.Second
	// maxPendingRows and maxPendingBytes bound the rows waiting in memory
	// (a disconnected plugin, say); past them the outbox drops them and
	// reads the database instead.
	maxPendingRows  = 20 * sendBatch
	maxPendingBytes = 16 * transport.MaxSendBytes
)

// New makes the outbox; Run starts it.
func New(d Deps) *Outbox {
	return &Outbox{Deps: d, wake: make(chan struct{}, 1), needScan: true}
}

// Nudge wakes the outbox (the claim's status changed).
func (o *Outbox) Nudge() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// Handover gives the outbox rows a group commit under st has just
// committed, and wakes it.
func (o *Outbox) Handover(st claim.Status, rows []Row) {
	if len(rows) == 0 {
		return
	}
	o.mu.Lock()
	switch {
	case o.needScan:
		// The coming scan reads them from the database.
	case st.Shard != o.term.shard || st.Epoch != o.term.epoch:
		o.needScan = true
	case len(o.pending)+len(rows) > maxPendingRows || o.pendingB > maxPendingBytes:
		o.needScan = true
	default:
		o.pending = append(o.pending, rows...)
		for _, r := range rows {
			o.pendingB += r.size
		}
	}
	o.mu.Unlock()
	o.Nudge()
}

// Rescan makes the next drain read the database.
func (o *Outbox) Rescan() {
	o.mu.Lock()
	o.needScan = true
	o.mu.Unlock()
	o.Nudge()
}

// Row is one message to send: a row of the messages table.
type Row struct {
	seq       int64 // 0 when handed over (the id names the row)
	id        string
	recipient string
	typ       string
	body      []byte
	size      int  // transport.MessageSize of the row
	tooBig    bool // over transport.MaxMessageBytes: it fails without being sent
}

// NewRow is the row a group commit stored.
func NewRow(id, recipient, typ string, body []byte) Row {
	r := Row{id: id, recipient: recipient, typ: typ, body: body}
	r.size = transport.MessageSize(transport.Message{ID: id, To: recipient, Type: typ, Body: body})
	r.tooBig = r.size > transport.MaxMessageBytes
	return r
}

// Run sends until ctx ends.
func (o *Outbox) Run(ctx context.Context) {
	retry := outboxMinRetry
	defer o.lastMarks()
	for {
		wait := outboxPoll
		progressed, err := o.drain(ctx)
		if err == nil {
			err = o.flushMarks(ctx, false)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			o.Log.Warn("outbox: sending failed; retrying", "err", err, "in", retry)
			wait, retry = retry, min(retry*2, outboxMaxRetry)
		} else if progressed {
			retry = outboxMinRetry
		}
		if len(o.marks) > 0 {
			wait = min(wait, max(markEvery-time.Since(o.marksSince), time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-o.wake:
		case <-time.After(wait):
		}
	}
}

// drain sends unsent rows while there are any and this coreapp is the
// connected primary. It reports whether it sent anything.
func (o *Outbox) drain(ctx context.Context) (bool, error) {
	sent := false
	for {
		st := o.Claim.Status()
		if !st.Primary || !st.Connected {
			return sent, nil
		}
		rows, err := o.next(ctx, st)
		if err == nil && len(rows) > 0 {
			err = o.send(ctx, st, rows)
		}
		if err != nil {
			// What was taken is unsent in the database, and
			// what was handed over since may follow it there.
			o.Rescan()
			return sent, err
		}
		if len(rows) == 0 {
			return sent, nil
		}
		sent = true
		if err := o.flushMarks(ctx, false); err != nil {
			return sent, err
		}
	}
}

// flushMarks writes the ids in marks as sent, in one UPDATE: when all is
// true, or when the oldest has waited markEvery, or when there are
// markBatch of them. On an error they stay for the next flush.
func (o *Outbox) flushMarks(ctx context.Context, all bool) error {
	if len(o.marks) == 0 || !all && len(o.marks) < markBatch && time.Since(o.marksSince) < markEvery {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// By id (unique): a handed-over row's seq is not known here.
	q := `UPDATE messages SET state = ?, sent_at = NOW(6) WHERE id IN (?` + strings.Repeat(",?", len(o.marks)-1) + `)`
	if _, err := o.DB.ExecContext(qctx, q, append([]any{stateSent}, o.marks...)...); err != nil {
		return fmt.Errorf("mark %d messages sent: %w", len(o.marks), err)
	}
	clear(o.marks)
	o.marks = o.marks[:0]
	return nil
}

// lastMarks writes what is left as Run returns (the coreapp is stopping),
// so that the next holder does not send it again: its own short deadline,
// the run's context being over.
func (o *Outbox) lastMarks() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := o.flushMarks(ctx, true); err != nil {
		o.Log.Warn("outbox: could not mark the last messages sent; the next holder sends them again and the network drops the copies", "err", err)
	}
}

// next returns the next batch to send: from a scan of the database while
// one is needed or under way, else from what was handed over.
func (o *Outbox) next(ctx context.Context, st claim.Status) ([]Row, error) {
	_, mapVersion := o.Settings.Layout()
	term := outboxTerm{shard: st.Shard, epoch: st.Epoch, mapVersion: mapVersion}
	o.mu.Lock()
	if term != o.term || time.Since(o.lastScan) > outboxRescan {
		o.term, o.needScan = term, true
	}
	if o.needScan {
		// Everything handed over so far is committed, so the scan finds
		// it; what is handed over from now on waits for the scan.
		o.needScan, o.scanning = false, true
		o.pending, o.pendingB = nil, 0
		o.lastScan = time.Now()
	}
	if !o.scanning {
		rows := o.take()
		o.mu.Unlock()
		return rows, nil
	}
	o.mu.Unlock()
	// A scan reads the rows still unsent in the database: the ones the
	// network already took must be written so first, or it sends them
	// again.
	if err := o.flushMarks(ctx, true); err != nil {
		return nil, err
	}
	rows, more, err := o.load(ctx, st.Shard)
	if err != nil {
		return nil, err
	}
	// Rows read back from the database may be visible before they are
	// durable (see durable); rows handed over are durable already, their
	// COMMIT having returned.
	if len(rows) > 0 {
		if err := o.durable(ctx, st.Shard, rows); err != nil {
			return nil, err
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(rows) > 0 && len(o.pending) > 0 {
		// Rows handed over after the scan began that this read found
		// already: they are sent now, not again from memory.
		loaded := make(map[string]bool, len(rows))
		for _, r := range rows {
			loaded[r.id] = true
		}
		kept := o.pending[:0]
		o.pendingB = 0
		for _, r := range o.pending {
			if !loaded[r.id] {
				kept = append(kept, r)
				o.pendingB += r.size
			}
		}
		clear(o.pending[len(kept):])
		o.pending = kept
	}
	if !more {
		// This read found every unsent row committed before it, and
		// every one committed after it was handed over: memory has the
		// rest (a copy of one now being sent at most, which the network
		// drops).
		o.scanning = false
	}
	return rows, nil
}

// take removes the first handed-over rows, a batch as load would cut it,
// from pending. o.mu is held.
func (o *Outbox) take() []Row {
	n, total := 0, 0
	for n < len(o.pending) && n < sendBatch {
		r := o.pending[n]
		if !r.tooBig {
			if n > 0 && total+r.size > transport.MaxSendBytes {
				break
			}
			total += r.size
		}
		n++
	}
	if n == 0 {
		return nil
	}
	rows := slices.Clone(o.pending[:n])
	clear(o.pending[:n])
	o.pending = o.pending[n:]
	for _, r := range rows {
		o.pendingB -= r.size
	}
	if len(o.pending) == 0 {
		o.pending = nil // let the backing array go
	}
	return rows
}

// load returns the shard's next batch: its first unsent rows in seq order,
// at most sendBatch of them and, unless the first alone is larger, at most
// transport.MaxSendBytes. more reports that unsent rows were left out. It
// reads the sizes first and then only the bodies it sends, so a backlog of
// large messages is not read again whole for every batch.
func (o *Outbox) load(ctx context.Context, shard int) (rows []Row, more bool, err error) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rs, err := o.DB.QueryContext(qctx, `SELECT seq, id, recipient, type,
			LENGTH(id) + LENGTH(recipient) + LENGTH(type) + LENGTH(body) FROM messages
		WHERE shard_id = ? AND state = ? ORDER BY seq LIMIT ?`, shard, StateUnsent, sendBatch)
	if err != nil {
		return nil, false, fmt.Errorf("load outbox of shard %d: %w", shard, err)
	}
	defer rs.Close()
	total, n := 0, 0
	for rs.Next() {
		n++
		var r Row
		if err := rs.Scan(&r.seq, &r.id, &r.recipient, &r.typ, &r.size); err != nil {
			return nil, false, fmt.Errorf("load outbox of shard %d: %w", shard, err)
		}
		r.tooBig = r.size > transport.MaxMessageBytes
		if !r.tooBig {
			if len(rows) > 0 && total+r.size > transport.MaxSendBytes {
				more = true
				break
			}
			total += r.size
		}
		rows = append(rows, r)
	}
	if err := rs.Err(); err != nil {
		return nil, false, fmt.Errorf("load outbox of shard %d: %w", shard, err)
	}
	rs.Close()
	more = more || n == sendBatch
	var seqs []any
	byseq := map[int64]*Row{}
	for i := range rows {
		if !rows[i].tooBig {
			seqs = append(seqs, rows[i].seq)
			byseq[rows[i].seq] = &rows[i]
		}
	}
	if len(seqs) == 0 {
		return rows, more, nil
	}
	bs, err := o.DB.QueryContext(qctx, `SELECT seq, body FROM messages WHERE seq IN (?`+strings.Repeat(",?", len(seqs)-1)+`)`, seqs...)
	if err != nil {
		return nil, false, fmt.Errorf("load %d bodies of shard %d: %w", len(seqs), shard, err)
	}
	defer bs.Close()
	for bs.Next() {
		var seq int64
		var body []byte
		if err := bs.Scan(&seq, &body); err != nil {
			return nil, false, fmt.Errorf("load bodies of shard %d: %w", shard, err)
		}
		if r := byseq[seq]; r != nil {
			r.body = body
		}
	}
	return rows, more, bs.Err()
}

// durable returns once every row of the batch is on disk, so that no row
// reaches the network that a crash of mysqld could still take back.
// InnoDB makes a commit visible to other sessions before its redo log is
// flushed: a commit that waits behind another's fsync is readable
// meanwhile. Had the outbox sent such a row and mysqld died before the
// flush, recovery would roll the row back; the client, never answered,
// retries with its idempotency key, finds no row with that scope and
// stores the message again under a new id, and the network gets it
// twice (the nemesis found this under db-crash, TestOutboxSendsOnlyDurableRows
// forces it). The redo log is one sequence flushed in order, so a write of
// our own, committed after the rows were read, reaches the disk only with
// every commit before it: its COMMIT returning proves the batch as durable
// as an acknowledged message. The write stamps the batch's sent_at: for an
// unsent row, when a session last made sure it is durable (here, or a
// retry answered with it in package accept); marking it sent overwrites it. A
// row must change, or InnoDB logs nothing to flush.
func (o *Outbox) durable(ctx context.Context, shard int, rows []Row) error {
	seqs := make([]any, len(rows))
	for i, r := range rows {
		seqs[i] = r.seq
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := o.DB.ExecContext(qctx, `UPDATE messages SET sent_at = NOW(6) WHERE seq IN (?`+strings.Repeat(",?", len(seqs)-1)+`)`, seqs...)
	if err != nil {
		return fmt.Errorf("make %d rows of shard %d durable before sending: %w", len(seqs), shard, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return fmt.Errorf("make %d rows of shard %d durable before sending: no row changed (%v)", len(seqs), shard, err)
	}
	return nil
}

func (o *Outbox) send(ctx context.Context, st claim.Status, rows []Row) error {
	var msgs []transport.Message
	var index []int // rows[index[i]] is msgs[i]
	results := make([]transport.SendResult, len(rows))
	for i, r := range rows {
		if r.tooBig {
			// No Send can carry it: it fails alone instead of
			// failing its batch again and again.
			results[i] = transport.SendResult{ID: r.id, Status: transport.SendFailed,
				Error: fmt.Sprintf("message of %d bytes is larger than the transport allows (%d bytes)", r.size, transport.MaxMessageBytes)}
			continue
		}
		msgs = append(msgs, transport.Message{ID: r.id, To: r.recipient, Type: r.typ, Body: r.body})
		index = append(index, i)
	}
	if len(msgs) > 0 {
		var res []transport.SendResult
		err := transport.ErrNotRunning
		o.Plugins.With(func(t transport.Transport, _ uint64) {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			res, err = t.Send(sctx, msgs)
		})
		if err != nil {
			return fmt.Errorf("send %d messages on shard %d: %w", len(msgs), st.Shard, err)
		}
		for j, r := range res {
			results[index[j]] = r
		}
	}
	var ok []any
	var failed []FailedSend
	for i, r := range results {
		switch r.Status {
		case transport.SendAccepted, transport.SendDuplicate:
			ok = append(ok, rows[i].id)
		default:
			failed = append(failed, FailedSend{ID: rows[i].id, Recipient: rows[i].recipient, Reason: r.Error})
		}
	}
	o.Delivered.Add(float64(len(ok)))
	if len(failed) > 0 {
		// The failed statuses go through the callback writer, which keeps
		// callbacks in one order; a lost one would be made again on resend.
		if err := o.Failures.SendFailed(ctx, st.Shard, failed); err != nil {
			return err
		}
	}
	if len(ok) > 0 {
		if len(o.marks) == 0 {
			o.marksSince = time.Now()
		}
		o.marks = append(o.marks, ok...)
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, f := range failed {
		if _, err := o.DB.ExecContext(qctx, `UPDATE messages SET state = ?, error = ?, sent_at = NOW(6) WHERE id = ?`,
			stateFailed, truncate(f.Reason, 255), f.ID); err != nil {
			return fmt.Errorf("mark message failed: %w", err)
		}
	}
	return nil
}

// FailedSend is a message the network refused, and why.
type FailedSend struct {
	ID, Recipient, Reason string
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// ID is the row's message id.
func (r Row) ID() string { return r.id }
