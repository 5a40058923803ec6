package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Message states in the messages table.
const (
	stateUnsent = 0
	stateSent   = 1 // the network has it (accepted or a duplicate)
	stateFailed = 2 // the network refused it; a failed status was sent
)

const (
	// sendBatch is how many messages go to the plugin in one Send at most:
	// per message gRPC calls would cap a shard at a few thousand per
	// second. A batch is also cut at transport.MaxSendBytes, so that large
	// messages never make a Send the plugin or the network cannot take.
	sendBatch = 500
	// outboxPoll finds rows left by a previous primary, and rows whose
	// wake-up was missed; commits nudge the sender directly.
	outboxPoll     = 200 * time.Millisecond
	outboxMinRetry = 50 * time.Millisecond
	outboxMaxRetry = 2 * time.Second
)

// outbox delivers the shard's committed messages to the network: all its
// unsent rows in seq (acceptance) order, one batch in flight, so messages
// to one recipient arrive in the order they were accepted. A batch that
// fails is sent again whole; the network drops the copies by id. Rows are
// marked sent only after the network answered, so a new primary (or this
// one after a plugin restart) sends again what might not have arrived.
type outbox struct {
	c    *Coreapp
	wake chan struct{}
}

func newOutbox(c *Coreapp) *outbox { return &outbox{c: c, wake: make(chan struct{}, 1)} }

func (o *outbox) nudge() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

type outRow struct {
	seq       int64
	id        string
	recipient string
	typ       string
	body      []byte
	size      int  // transport.MessageSize of the row
	tooBig    bool // over transport.MaxMessageBytes: it fails without being sent
}

func (o *outbox) run(ctx context.Context) {
	retry := outboxMinRetry
	for {
		wait := outboxPoll
		progressed, err := o.drain(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			o.c.log.Warn("outbox: sending failed; retrying", "err", err, "in", retry)
			wait, retry = retry, min(retry*2, outboxMaxRetry)
		} else if progressed {
			retry = outboxMinRetry
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
func (o *outbox) drain(ctx context.Context) (bool, error) {
	sent := false
	for {
		st := o.c.holder.status()
		if !st.Primary || !st.Connected {
			return sent, nil
		}
		rows, more, err := o.load(ctx, st.Shard)
		if err != nil {
			return sent, err
		}
		if len(rows) == 0 {
			return sent, nil
		}
		if err := o.durable(ctx, st.Shard, rows); err != nil {
			return sent, err
		}
		if err := o.send(ctx, st, rows); err != nil {
			return sent, err
		}
		sent = true
		if !more {
			return sent, nil
		}
	}
}

// load returns the shard's next batch: its first unsent rows in seq order,
// at most sendBatch of them and, unless the first alone is larger, at most
// transport.MaxSendBytes. more reports that unsent rows were left out. It
// reads the sizes first and then only the bodies it sends, so a backlog of
// large messages is not read again whole for every batch.
func (o *outbox) load(ctx context.Context, shard int) (rows []outRow, more bool, err error) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rs, err := o.c.db.QueryContext(qctx, `SELECT seq, id, recipient, type,
			LENGTH(id) + LENGTH(recipient) + LENGTH(type) + LENGTH(body) FROM messages
		WHERE shard_id = ? AND state = ? ORDER BY seq LIMIT ?`, shard, stateUnsent, sendBatch)
	if err != nil {
		return nil, false, fmt.Errorf("load outbox of shard %d: %w", shard, err)
	}
	defer rs.Close()
	total, n := 0, 0
	for rs.Next() {
		n++
		var r outRow
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
	byseq := map[int64]*outRow{}
	for i := range rows {
		if !rows[i].tooBig {
			seqs = append(seqs, rows[i].seq)
			byseq[rows[i].seq] = &rows[i]
		}
	}
	if len(seqs) == 0 {
		return rows, more, nil
	}
	bs, err := o.c.db.QueryContext(qctx, `SELECT seq, body FROM messages WHERE seq IN (?`+strings.Repeat(",?", len(seqs)-1)+`)`, seqs...)
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
// retry answered with it in accept.go); marking it sent overwrites it. A
// row must change, or InnoDB logs nothing to flush.
func (o *outbox) durable(ctx context.Context, shard int, rows []outRow) error {
	seqs := make([]any, len(rows))
	for i, r := range rows {
		seqs[i] = r.seq
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := o.c.db.ExecContext(qctx, `UPDATE messages SET sent_at = NOW(6) WHERE seq IN (?`+strings.Repeat(",?", len(seqs)-1)+`)`, seqs...)
	if err != nil {
		return fmt.Errorf("make %d rows of shard %d durable before sending: %w", len(seqs), shard, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return fmt.Errorf("make %d rows of shard %d durable before sending: no row changed (%v)", len(seqs), shard, err)
	}
	return nil
}

var errNoTransport = errors.New("transport plugin not running")

func (o *outbox) send(ctx context.Context, st status, rows []outRow) error {
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
		err := errNoTransport
		o.c.plugins.With(func(t transport.Transport, _ uint64) {
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
	var failed []failedSend
	for i, r := range results {
		switch r.Status {
		case transport.SendAccepted, transport.SendDuplicate:
			ok = append(ok, rows[i].seq)
		default:
			failed = append(failed, failedSend{row: rows[i], reason: r.Error})
		}
	}
	o.c.metrics.delivered.Add(float64(len(ok)))
	if len(failed) > 0 {
		// The failed statuses go through the callback writer, which keeps
		// callbacks in one order; a lost one would be made again on resend.
		if err := o.c.callbacks.sendFailed(ctx, st.Shard, failed); err != nil {
			return err
		}
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if len(ok) > 0 {
		q := `UPDATE messages SET state = ?, sent_at = NOW(6) WHERE seq IN (?` + strings.Repeat(",?", len(ok)-1) + `)`
		if _, err := o.c.db.ExecContext(qctx, q, append([]any{stateSent}, ok...)...); err != nil {
			return fmt.Errorf("mark %d messages sent: %w", len(ok), err)
		}
	}
	for _, f := range failed {
		if _, err := o.c.db.ExecContext(qctx, `UPDATE messages SET state = ?, error = ?, sent_at = NOW(6) WHERE seq = ?`,
			stateFailed, truncate(f.reason, 255), f.row.seq); err != nil {
			return fmt.Errorf("mark message failed: %w", err)
		}
	}
	return nil
}

type failedSend struct {
	row    outRow
	reason string
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
