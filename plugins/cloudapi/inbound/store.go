// Package inbound is the Cloud API transport's inbound path: Meta's
// webhooks, taken by the gateway's POST /cloudapi/webhook, become rows of
// cloudapi_inbound (schema 10), one per status or message, in the stream of
// the contact's shard; the shard's primary coreapp's cloudapi plugin reads
// them as its transport Events and acknowledges them.
//
// Both sides live here so the row format has one owner: the gateway calls
// Verify, Parse and Store; the plugin calls Read and Ack; the primary
// master's garbage collector runs CollectQuery.
package inbound

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Stream is the Event.Stream of every event read from cloudapi_inbound.
// Sequence numbers live in MySQL and never start again, so one name is
// enough.
const Stream = "cloudapi-inbound"

// Record is one event to store: the transport Event (its Shard, Seq, Stream
// and Conn are the store's and the reader's to set) and its dedupe key.
type Record struct {
	Event transport.Event
	// DedupeKey makes Meta's retries one row: the wamid for a message,
	// wamid + ":" + status for a status.
	DedupeKey string
}

// Store writes each shard's records (shard -> records, in the order Meta
// sent them) in one transaction: each record not stored before gets its
// shard's next seq (cloudapi_inbound_seq, row-locked, so the rows of a shard
// commit in seq order and a reader never sees a gap); a record whose dedupe
// key is already stored is left out. It returns how many rows it added. A
// nil error means everything is committed: only then may the webhook be
// answered 200. Shards are locked in ascending order, so two concurrent
// webhooks cannot deadlock on them; an InnoDB deadlock (the dedupe index)
// is retried.
func Store(ctx context.Context, db *sql.DB, byShard map[int][]Record) (added int, err error) {
	for attempt := 0; ; attempt++ {
		added, err = store(ctx, db, byShard)
		if err == nil || attempt == 2 || !database.Deadlock(err) {
			return added, err
		}
	}
}

func store(ctx context.Context, db *sql.DB, byShard map[int][]Record) (int, error) {
	return inTx(ctx, db, func(tx *sql.Tx) (int, error) {
		n, _, err := storeTx(ctx, tx, byShard)
		return n, err
	})
}

// StoreForContacts stores recs (in the order Meta sent them) each in the
// stream of its contact's shard, as Store does, with the shard count read in
// the same transaction under a share lock of the cluster row. The master's
// re-shard holds that row for update while it changes the count and moves
// the unacknowledged rows (RelayoutTx), so a row is stored either before
// the re-shard, and moved by it, or after it, under the new count: never
// under a count the re-shard already replaced, whatever shard map the
// gateway has cached. shards are the shards that got new rows, ascending:
// the caller tells their primaries (transport.OpEventsStored), whose
// plugins otherwise find the rows only at their safety poll.
func StoreForContacts(ctx context.Context, db *sql.DB, recs []Record) (added int, shards []int, err error) {
	if len(recs) == 0 {
		return 0, nil, nil
	}
	for attempt := 0; ; attempt++ {
		added, err = inTx(ctx, db, func(tx *sql.Tx) (int, error) {
			var count int
			if err := tx.QueryRowContext(ctx, `SELECT shards FROM cluster WHERE id = 1 LOCK IN SHARE MODE`).Scan(&count); err != nil {
				return 0, fmt.Errorf("store inbound events: read the shard count: %w", err)
			}
			byShard, err := ByShard(recs, count)
			if err != nil {
				return 0, fmt.Errorf("store inbound events: %w", err)
			}
			n, grown, err := storeTx(ctx, tx, byShard)
			shards = grown
			return n, err
		})
		if err == nil || attempt == 2 || !database.Deadlock(err) {
			if err != nil {
				shards = nil
			}
			return added, shards, err
		}
	}
}

// inTx runs fn in a transaction and commits it if fn succeeds.
func inTx(ctx context.Context, db *sql.DB, fn func(tx *sql.Tx) (int, error)) (int, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("store inbound events: begin: %w", err)
	}
	defer tx.Rollback()
	n, err := fn(tx)
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("store inbound events: commit: %w", err)
	}
	return n, nil
}

// storeTx is Store's work within tx. grown are the shards that got new
// rows, ascending.
func storeTx(ctx context.Context, tx *sql.Tx, byShard map[int][]Record) (added int, grown []int, err error) {
	shards := make([]int, 0, len(byShard))
	for s, recs := range byShard {
		if len(recs) > 0 {
			shards = append(shards, s)
		}
	}
	slices.Sort(shards)
	for _, s := range shards {
		n, err := storeShard(ctx, tx, s, byShard[s])
		if err != nil {
			return 0, nil, fmt.Errorf("store inbound events of shard %d: %w", s, err)
		}
		added += n
		if n > 0 {
			grown = append(grown, s)
		}
	}
	return added, grown, nil
}

func storeShard(ctx context.Context, tx *sql.Tx, shard int, recs []Record) (int, error) {
	// ON DUPLICATE KEY UPDATE takes the row's exclusive lock at once (an
	// INSERT IGNORE would take a shared one first, and two webhooks both
	// upgrading it deadlock); it creates the shard's row the first time.
	if _, err := tx.ExecContext(ctx, `INSERT INTO cloudapi_inbound_seq (shard, seq) VALUES (?, 0) ON DUPLICATE KEY UPDATE seq = seq`, shard); err != nil {
		return 0, fmt.Errorf("seq row: %w", err)
	}
	var seq uint64
	if err := tx.QueryRowContext(ctx, `SELECT seq FROM cloudapi_inbound_seq WHERE shard = ? FOR UPDATE`, shard).Scan(&seq); err != nil {
		return 0, fmt.Errorf("lock seq: %w", err)
	}
	added := 0
	for _, r := range recs {
		e := r.Event
		if r.DedupeKey == "" {
			return 0, fmt.Errorf("an event of %s without a dedupe key", e.Recipient)
		}
		key := r.DedupeKey
		if len(key) > 191 { // the column's length; wamids are far shorter
			sum := sha256.Sum256([]byte(key))
			key = "sha256:" + hex.EncodeToString(sum[:])
		}
		// Under the seq lock nobody else writes this shard's rows, so
		// the key that can collide is only the dedupe key: zero rows
		// affected means Meta sent this event before.
		res, err := tx.ExecContext(ctx, `INSERT INTO cloudapi_inbound
			(shard, seq, dedupe_key, kind, message_id, status, recipient, ts, payload, received_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NOW(6))
			ON DUPLICATE KEY UPDATE dedupe_key = dedupe_key`,
			shard, seq+1, key, string(e.Kind), e.MessageID, e.Status, e.Recipient, e.Timestamp, string(e.Payload))
		if err != nil {
			return 0, fmt.Errorf("insert %s: %w", r.DedupeKey, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return 0, fmt.Errorf("insert %s: %w", r.DedupeKey, err)
		} else if n == 1 {
			seq++
			added++
		}
	}
	if added > 0 {
		if _, err := tx.ExecContext(ctx, `UPDATE cloudapi_inbound_seq SET seq = ? WHERE shard = ?`, seq, shard); err != nil {
			return 0, fmt.Errorf("advance seq: %w", err)
		}
	}
	return added, nil
}

// Read returns up to limit unacknowledged events of shard with a seq above
// afterSeq, in seq order, as transport Events (Stream set, Conn left for
// the plugin to set). Acknowledgements are cumulative (Ack), so the
// unacknowledged rows are the shard's newest, without gaps: a new
// connection reads from afterSeq 0 and gets the oldest unacknowledged event
// first, as the transport contract asks; then it reads on from the last
// seq it got.
func Read(ctx context.Context, db *sql.DB, shard int, afterSeq uint64, limit int) ([]transport.Event, error) {
	rows, err := db.QueryContext(ctx, `SELECT seq, kind, message_id, status, recipient, ts, payload
		FROM cloudapi_inbound WHERE shard = ? AND seq > ? AND acked = 0 ORDER BY seq LIMIT ?`, shard, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("read inbound events of shard %d: %w", shard, err)
	}
	defer rows.Close()
	var out []transport.Event
	for rows.Next() {
		e := transport.Event{Shard: shard, Stream: Stream}
		var kind, payload string
		if err := rows.Scan(&e.Seq, &kind, &e.MessageID, &e.Status, &e.Recipient, &e.Timestamp, &payload); err != nil {
			return nil, fmt.Errorf("read inbound events of shard %d: %w", shard, err)
		}
		e.Kind = transport.EventKind(kind)
		if payload != "" {
			e.Payload = []byte(payload)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read inbound events of shard %d: %w", shard, err)
	}
	return out, nil
}

// Ack marks every event of shard up to and including seq acknowledged: the
// coreapp has stored it (as a callback). Acknowledging again is a no-op.
func Ack(ctx context.Context, db *sql.DB, shard int, seq uint64) error {
	if _, err := db.ExecContext(ctx, `UPDATE cloudapi_inbound SET acked = 1 WHERE shard = ? AND seq <= ? AND acked = 0`, shard, seq); err != nil {
		return fmt.Errorf("acknowledge inbound events of shard %d up to %d: %w", shard, seq, err)
	}
	return nil
}

// CollectQuery deletes a batch of acknowledged rows received more than a
// retention ago (arguments: the retention in microseconds, the batch size).
// The primary master's garbage collector runs it with MC_GC_RETENTION, but
// never less than MinRetention: a deleted row no longer deduplicates, so it
// must outlive every copy of its webhook the gateway would still accept
// (see DefaultMaxAge). Unacknowledged rows are never collected.
const CollectQuery = `DELETE FROM cloudapi_inbound WHERE acked = 1 AND received_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT ?`

// DefaultMaxAge is how old the newest event of a webhook may be before the
// gateway refuses it as stale (a replay): Meta retries an unacknowledged
// webhook for up to 7 days, so a day more.
const DefaultMaxAge = 8 * 24 * time.Hour

// MinRetention is the least age at which acknowledged rows are collected:
// DefaultMaxAge, so a retried webhook the gateway still accepts finds its
// rows and is not stored twice.
const MinRetention = DefaultMaxAge

// Relayout moves every unacknowledged event whose contact's shard under
// shards is not the shard it is stored in to the end of its new shard's
// stream, in one transaction of its own (see RelayoutTx). It returns how
// many events moved. The master's re-shard calls RelayoutTx instead, inside
// its own transaction; this is for tools and tests.
func Relayout(ctx context.Context, db *sql.DB, shards int) (int, error) {
	for attempt := 0; ; attempt++ {
		n, err := relayout(ctx, db, shards)
		if err == nil || attempt == 2 || !database.Deadlock(err) {
			return n, err
		}
	}
}

func relayout(ctx context.Context, db *sql.DB, shards int) (int, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("relayout inbound events: begin: %w", err)
	}
	defer tx.Rollback()
	n, err := RelayoutTx(ctx, tx, shards)
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("relayout inbound events: commit: %w", err)
	}
	return n, nil
}

// RelayoutTx moves, within tx, every unacknowledged event whose contact's
// shard under shards is not the shard it is stored in (the shard count
// changed) to the end of its new shard's stream, as the transport
// contract's networks do (transport.Layout): in its old place stays an
// EventMoved row, so the old stream keeps no gap, and a contact's events
// keep their order. A shard removed by a shrink is emptied the same way,
// and everything left in it (its moved rows) is marked acknowledged: it has
// no reader, and a later grow that brings its id back must find its stream
// starting after them, without a gap. It returns how many events moved.
//
// The master's re-shard calls it in the transaction that changes the count,
// which holds the cluster row for update: StoreForContacts share-locks that
// row and reads the count under it, so no row is stored under the old
// count after this commits, and none stored before is missed here.
func RelayoutTx(ctx context.Context, tx *sql.Tx, shards int) (int, error) {
	if !shard.ValidCount(shards) {
		return 0, fmt.Errorf("relayout inbound events: %d is not a shard count", shards)
	}
	type row struct {
		shard                                  int
		seq                                    uint64
		key, kind, id, status, recipient, body string
		ts                                     int64
		received                               sql.NullTime
	}
	// Locking read: the newest committed rows, held until the commit, so
	// an Ack racing this waits (and a row it acknowledges after the move
	// is a moved row: the moved copy is delivered again, in order).
	rs, err := tx.QueryContext(ctx, `SELECT shard, seq, dedupe_key, kind, message_id, status, recipient, ts, payload, received_at
		FROM cloudapi_inbound WHERE acked = 0 AND kind <> ? ORDER BY shard, seq FOR UPDATE`, string(transport.EventMoved))
	if err != nil {
		return 0, fmt.Errorf("relayout inbound events: %w", err)
	}
	var move []row
	involved := map[int]bool{}
	for rs.Next() {
		var r row
		if err := rs.Scan(&r.shard, &r.seq, &r.key, &r.kind, &r.id, &r.status, &r.recipient, &r.ts, &r.body, &r.received); err != nil {
			rs.Close()
			return 0, fmt.Errorf("relayout inbound events: %w", err)
		}
		if to, err := shard.For(r.recipient, shards); err == nil && to != r.shard {
			move = append(move, r)
			involved[r.shard], involved[to] = true, true
		}
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return 0, fmt.Errorf("relayout inbound events: %w", err)
	}
	order := make([]int, 0, len(involved))
	for s := range involved {
		order = append(order, s)
	}
	slices.Sort(order)
	next := map[int]uint64{}
	for _, s := range order {
		if _, err := tx.ExecContext(ctx, `INSERT INTO cloudapi_inbound_seq (shard, seq) VALUES (?, 0) ON DUPLICATE KEY UPDATE seq = seq`, s); err != nil {
			return 0, fmt.Errorf("relayout inbound events: seq row of shard %d: %w", s, err)
		}
		var seq uint64
		if err := tx.QueryRowContext(ctx, `SELECT seq FROM cloudapi_inbound_seq WHERE shard = ? FOR UPDATE`, s).Scan(&seq); err != nil {
			return 0, fmt.Errorf("relayout inbound events: lock seq of shard %d: %w", s, err)
		}
		next[s] = seq
	}
	for _, r := range move {
		to, _ := shard.For(r.recipient, shards)
		// The old place keeps a moved row under a key of its own, which
		// frees the dedupe key for the event's new row.
		if _, err := tx.ExecContext(ctx, `UPDATE cloudapi_inbound SET kind = ?, dedupe_key = ?, message_id = '', status = '', payload = ''
			WHERE shard = ? AND seq = ?`, string(transport.EventMoved), fmt.Sprintf("moved:%d:%d", r.shard, r.seq), r.shard, r.seq); err != nil {
			return 0, fmt.Errorf("relayout inbound event %d/%d: %w", r.shard, r.seq, err)
		}
		next[to]++
		if _, err := tx.ExecContext(ctx, `INSERT INTO cloudapi_inbound
			(shard, seq, dedupe_key, kind, message_id, status, recipient, ts, payload, received_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?, NOW(6)))`,
			to, next[to], r.key, r.kind, r.id, r.status, r.recipient, r.ts, r.body, r.received); err != nil {
			return 0, fmt.Errorf("relayout inbound event %d/%d to shard %d: %w", r.shard, r.seq, to, err)
		}
	}
	for _, s := range order {
		if _, err := tx.ExecContext(ctx, `UPDATE cloudapi_inbound_seq SET seq = ? WHERE shard = ?`, next[s], s); err != nil {
			return 0, fmt.Errorf("relayout inbound events: advance seq of shard %d: %w", s, err)
		}
	}
	// A removed shard's moved rows, from this move or an earlier one,
	// are acknowledged: nobody reads them, and the collector takes them.
	if _, err := tx.ExecContext(ctx, `UPDATE cloudapi_inbound SET acked = 1 WHERE acked = 0 AND shard >= ?`, shards); err != nil {
		return 0, fmt.Errorf("relayout inbound events: acknowledge removed shards: %w", err)
	}
	return len(move), nil
}
