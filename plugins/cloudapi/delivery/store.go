package delivery

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// State is a message's state in cloudapi_messages.
type State string

const (
	// StateSending: an attempt was recorded and its request may be on
	// its way. Found by a later Send (after a crash or failover in the
	// middle of a request), it means the same as StateUnknown.
	StateSending State = "sending"
	// StateUnknown: the request may or may not have been processed.
	StateUnknown State = "unknown"
	// StatePending: the last attempt got a definite error (retry,
	// throttle, pair limit, token) or was refused before it left: not
	// processed, safe to send again.
	StatePending State = "pending"
	StateSent    State = "sent"
	StateFailed  State = "failed"
)

// Record is one message's row in cloudapi_messages.
type Record struct {
	ID        string
	WAMID     string
	Recipient string
	State     State
	Attempts  int
	Node      string
	FirstAt   time.Time
	LastAt    time.Time
	Err       *graphapi.Error // for StateFailed
}

// Seen is what the status webhooks said about a message.
type Seen struct {
	Found  bool
	Status string // sent, delivered, read, failed
	WAMID  string // when the status carried it
}

// Store keeps the attempt records where a new primary finds them (MySQL:
// SQLStore) and answers whether a status webhook named a message.
type Store interface {
	// Load returns the records of ids that have one.
	Load(ctx context.Context, ids []string) (map[string]Record, error)
	// Begin records an attempt about to be posted: StateSending,
	// attempts+1. It returns only once the record is durable, so a
	// crash during the request leaves it for the next primary.
	Begin(ctx context.Context, m Outgoing, node string, at time.Time) error
	// Finish records the attempt's outcome (wamid for StateSent, gerr
	// for StateFailed).
	Finish(ctx context.Context, id string, st State, wamid string, gerr *graphapi.Error, at time.Time) error
	// StatusSeen tells whether a status webhook named id (rows of
	// cloudapi_inbound with kind status and message_id id).
	StatusSeen(ctx context.Context, id string) (Seen, error)
}

// SQLStore is Store on the cluster's MySQL: tables cloudapi_messages
// (ours) and cloudapi_inbound (the webhook's, read only). Made with
// NewSQLStore, it commits the records of concurrent requests together
// (see writer); a literal SQLStore{DB: db} writes each alone.
type SQLStore struct {
	DB *sql.DB
	w  *writer
}

// NewSQLStore returns a store on db that groups concurrent writes.
func NewSQLStore(db *sql.DB) SQLStore { return SQLStore{DB: db, w: &writer{db: db}} }

// Load implements Store.
func (s SQLStore) Load(ctx context.Context, ids []string) (map[string]Record, error) {
	out := make(map[string]Record, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	rows, err := s.DB.QueryContext(ctx, `SELECT id, COALESCE(wamid, ''), recipient, state, attempts, node,
			first_at, last_at, COALESCE(error, '') FROM cloudapi_messages
		WHERE id IN (?`+strings.Repeat(",?", len(ids)-1)+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("load %d send records: %w", len(ids), err)
	}
	defer rows.Close()
	for rows.Next() {
		var r Record
		var errText string
		if err := rows.Scan(&r.ID, &r.WAMID, &r.Recipient, &r.State, &r.Attempts, &r.Node, &r.FirstAt, &r.LastAt, &errText); err != nil {
			return nil, fmt.Errorf("load send records: %w", err)
		}
		if errText != "" {
			var e storedError
			if json.Unmarshal([]byte(errText), &e) == nil {
				e.Error.HTTPStatus = e.HTTPStatus
				r.Err = &e.Error
			} else {
				r.Err = &graphapi.Error{Message: errText}
			}
		}
		out[r.ID] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load send records: %w", err)
	}
	return out, nil
}

// Begin implements Store.
func (s SQLStore) Begin(ctx context.Context, m Outgoing, node string, at time.Time) error {
	if err := s.write(ctx, record{begin: true, id: m.ID, to: m.To, state: StateSending, node: node, at: at.UTC()}); err != nil {
		return fmt.Errorf("record send attempt of %s: %w", m.ID, err)
	}
	return nil
}

// Finish implements Store.
func (s SQLStore) Finish(ctx context.Context, id string, st State, wamid string, gerr *graphapi.Error, at time.Time) error {
	r := record{id: id, state: st, at: at.UTC()}
	if wamid != "" {
		r.wamid = wamid
	}
	if gerr != nil {
		b, _ := json.Marshal(storedError{*gerr, gerr.HTTPStatus})
		r.err = string(b)
	}
	if err := s.write(ctx, r); err != nil {
		return fmt.Errorf("record outcome %s of %s: %w", st, id, err)
	}
	return nil
}

// record is one write to cloudapi_messages: an attempt (begin) or its
// outcome.
type record struct {
	begin      bool
	id, to     string
	state      State
	node       string
	wamid, err any // NULL when nil
	at         time.Time
	done       chan error
}

func (s SQLStore) write(ctx context.Context, r record) error {
	if s.w == nil {
		return writeRecords(ctx, s.DB, []record{r})
	}
	return s.w.write(r)
}

// writer is a group commit: with 16 requests in flight, two commits per
// message (the attempt before the request, the wamid after) made MySQL
// the engine's limit. A write that finds another one committing queues
// behind it; when that commit ends, the first queued write commits
// everything queued in one transaction (and hands on in turn, so no
// request waits on others' commits longer than one batch). Each write
// returns only once its own record is committed.
type writer struct {
	db       *sql.DB
	mu       sync.Mutex
	queue    []record
	flushing bool
}

// errLead tells a queued write that it commits the next batch.
var errLead = errors.New("delivery: lead the next commit")

func (w *writer) write(r record) error {
	r.done = make(chan error, 1)
	w.mu.Lock()
	w.queue = append(w.queue, r)
	if w.flushing {
		w.mu.Unlock()
		// No giving up on the context: a write handed the lead must
		// take it. The wait is bounded: a batch has 10 s at most.
		if err := <-r.done; err != errLead {
			return err
		}
	} else {
		w.flushing = true
		w.mu.Unlock()
	}
	w.mu.Lock()
	batch := w.queue
	w.queue = nil
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := writeRecords(ctx, w.db, batch)
	cancel()
	for _, b := range batch {
		if b.done != r.done {
			b.done <- err
		}
	}
	w.mu.Lock()
	if len(w.queue) > 0 {
		next := w.queue[0]
		w.mu.Unlock()
		next.done <- errLead
	} else {
		w.flushing = false
		w.mu.Unlock()
	}
	return err
}

// writeRecords writes a batch in one transaction: the attempts in one
// statement, the outcomes in another (rows always exist for outcomes: an
// attempt or a Load came first).
func writeRecords(ctx context.Context, db *sql.DB, batch []record) error {
	var begins, ends []any
	for _, r := range batch {
		if r.begin {
			begins = append(begins, r.id, r.to, r.state, r.node, r.at, r.at)
		} else {
			ends = append(ends, r.id, r.state, r.wamid, r.err, r.at, r.at)
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if n := len(begins) / 6; n > 0 {
		if _, err := tx.ExecContext(ctx, `INSERT INTO cloudapi_messages
				(id, recipient, state, attempts, node, first_at, last_at)
			VALUES (?, ?, ?, 1, ?, ?, ?)`+strings.Repeat(", (?, ?, ?, 1, ?, ?, ?)", n-1)+`
			ON DUPLICATE KEY UPDATE state = VALUES(state), attempts = attempts + 1,
				node = VALUES(node), last_at = VALUES(last_at)`, begins...); err != nil {
			return err
		}
	}
	if n := len(ends) / 6; n > 0 {
		if _, err := tx.ExecContext(ctx, `INSERT INTO cloudapi_messages
				(id, recipient, state, wamid, error, first_at, last_at)
			VALUES (?, '', ?, ?, ?, ?, ?)`+strings.Repeat(", (?, '', ?, ?, ?, ?, ?)", n-1)+`
			ON DUPLICATE KEY UPDATE state = VALUES(state), wamid = COALESCE(VALUES(wamid), wamid),
				error = VALUES(error), last_at = VALUES(last_at)`, ends...); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// storedError is the error as stored: the Graph error's own fields, with
// its HTTP status (not part of Graph's JSON).
type storedError struct {
	graphapi.Error
	HTTPStatus int `json:"http_status,omitempty"`
}

// StatusSeen implements Store. The wamid is read from the row's payload
// (the transport Event the webhook stored) when it holds one: any string
// value starting "wamid.".
func (s SQLStore) StatusSeen(ctx context.Context, id string) (Seen, error) {
	var seen Seen
	var payload string
	err := s.DB.QueryRowContext(ctx, `SELECT status, payload FROM cloudapi_inbound
		WHERE kind = 'status' AND message_id = ? ORDER BY seq LIMIT 1`, id).Scan(&seen.Status, &payload)
	if errors.Is(err, sql.ErrNoRows) {
		return Seen{}, nil
	}
	if err != nil {
		return Seen{}, fmt.Errorf("look for a status of %s: %w", id, err)
	}
	seen.Found = true
	var doc any
	if json.Unmarshal([]byte(payload), &doc) == nil {
		seen.WAMID = findWAMID(doc)
	}
	return seen, nil
}

func findWAMID(v any) string {
	switch x := v.(type) {
	case string:
		if strings.HasPrefix(x, "wamid.") {
			return x
		}
	case map[string]any:
		for _, y := range x {
			if w := findWAMID(y); w != "" {
				return w
			}
		}
	case []any:
		for _, y := range x {
			if w := findWAMID(y); w != "" {
				return w
			}
		}
	}
	return ""
}
