package delivery

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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
// (ours) and cloudapi_inbound (the webhook's, read only).
type SQLStore struct{ DB *sql.DB }

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
	_, err := s.DB.ExecContext(ctx, `INSERT INTO cloudapi_messages
			(id, recipient, state, attempts, node, first_at, last_at)
		VALUES (?, ?, ?, 1, ?, ?, ?)
		ON DUPLICATE KEY UPDATE state = VALUES(state), attempts = attempts + 1,
			node = VALUES(node), last_at = VALUES(last_at)`,
		m.ID, m.To, StateSending, node, at.UTC(), at.UTC())
	if err != nil {
		return fmt.Errorf("record send attempt of %s: %w", m.ID, err)
	}
	return nil
}

// Finish implements Store.
func (s SQLStore) Finish(ctx context.Context, id string, st State, wamid string, gerr *graphapi.Error, at time.Time) error {
	var w, e any
	if wamid != "" {
		w = wamid
	}
	if gerr != nil {
		b, _ := json.Marshal(storedError{*gerr, gerr.HTTPStatus})
		e = string(b)
	}
	_, err := s.DB.ExecContext(ctx, `UPDATE cloudapi_messages
		SET state = ?, wamid = COALESCE(?, wamid), error = ?, last_at = ? WHERE id = ?`,
		st, w, e, at.UTC(), id)
	if err != nil {
		return fmt.Errorf("record outcome %s of %s: %w", st, id, err)
	}
	return nil
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
