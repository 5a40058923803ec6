package cloudapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/delivery"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// States of a cloudapi_messages row.
const (
	// stateSending: a request left (or was about to) and its answer is not
	// recorded: the outcome is unknown until a status webhook names it.
	stateSending = "sending"
	// stateSent: the Graph API took it; wamid is set.
	stateSent = "sent"
	// stateRefused: the Graph API answered an error; error says which. A
	// retryable one is attempted again, a permanent one is the message's
	// failure.
	stateRefused = "refused"
	// stateUnknown: the request failed after it may have reached the Graph
	// API (timeout, connection cut).
	stateUnknown = "unknown"
	// stateFailed: the message can never be sent; error is the
	// On-Premises error (JSON) its failed status carries.
	stateFailed = "failed"
)

// poster is the delivery.Poster of a Transport: POST
// /{phone-number-id}/messages under the claim, each attempt recorded in
// cloudapi_messages before the request leaves and its wamid after.
type poster struct{ t *Transport }

var _ delivery.Poster = poster{}

// messagesAnswer is the Graph API's answer to a send.
type messagesAnswer struct {
	Messages []struct {
		ID string `json:"id"`
	} `json:"messages"`
}

// Post implements delivery.Poster. It refuses, sending nothing, once the
// claim's deadline has passed (or when the attempt cannot be recorded: an
// unrecorded attempt could be sent twice).
func (p poster) Post(ctx context.Context, m delivery.Outgoing) (string, error) {
	t := p.t
	c, err := t.Current()
	if err != nil {
		return "", fmt.Errorf("post %s: %w", m.ID, err)
	}
	if err := t.recordAttempt(ctx, m, c.Node); err != nil {
		return "", fmt.Errorf("post %s: not sent: %w", m.ID, err)
	}
	var ans messagesAnswer
	err = t.Do(ctx, http.MethodPost, "/"+t.cfg.PhoneNumberID+"/messages", "application/json", m.Body, &ans)
	var ge *graphapi.Error
	var ue *graph.UnknownError
	switch {
	case err == nil && (len(ans.Messages) == 0 || ans.Messages[0].ID == ""):
		// Taken, but no wamid: statuses still name it by our id.
		err = &graph.UnknownError{Op: "POST messages", Err: errors.New("the Graph API answered without a message id")}
		t.recordOutcome(m.ID, stateUnknown, "", err.Error())
		return "", err
	case err == nil:
		wamid := ans.Messages[0].ID
		t.recordOutcome(m.ID, stateSent, wamid, "")
		return wamid, nil
	case errors.As(err, &ge):
		t.recordOutcome(m.ID, stateRefused, "", ge.Error())
	case errors.As(err, &ue):
		t.recordOutcome(m.ID, stateUnknown, "", ue.Error())
	default:
		// Refused before sending (the deadline passed meanwhile).
		t.recordOutcome(m.ID, stateRefused, "", err.Error())
	}
	return "", err
}

// recordAttempt notes that a request for m is about to leave.
func (t *Transport) recordAttempt(ctx context.Context, m delivery.Outgoing, node string) error {
	if t.db == nil {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := t.db.ExecContext(qctx, `INSERT INTO cloudapi_messages (id, recipient, state, attempts, node, first_at, last_at)
		VALUES (?, ?, ?, 1, ?, NOW(6), NOW(6))
		ON DUPLICATE KEY UPDATE state = VALUES(state), attempts = attempts + 1, node = VALUES(node), last_at = NOW(6)`,
		m.ID, m.To, stateSending, node)
	if err != nil {
		return fmt.Errorf("record the attempt: %w", err)
	}
	return nil
}

// recordOutcome stores what came of an attempt. A failure to store it
// leaves the row "sending", which the next Send treats as an unknown
// outcome: never as not sent.
func (t *Transport) recordOutcome(id, state, wamid, detail string) {
	if t.db == nil {
		return
	}
	var w, e any
	if wamid != "" {
		w = wamid
	}
	if detail != "" {
		e = redact(detail, t.cfg.AccessToken)
	}
	for try := 0; try < 3; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := t.db.ExecContext(ctx, `UPDATE cloudapi_messages SET state = ?, wamid = COALESCE(?, wamid), error = ?, last_at = NOW(6) WHERE id = ?`,
			state, w, e, id)
		cancel()
		if err == nil {
			return
		}
		t.log.Warn("could not record a send's outcome", "id", id, "state", state, "err", err)
		time.Sleep(100 * time.Millisecond)
	}
}

// recordFailed stores a message's final failure (the On-Premises error,
// JSON), so a resend of the batch answers the same without a request.
func (t *Transport) recordFailed(ctx context.Context, id, to, onPrem string) error {
	if t.db == nil {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := t.db.ExecContext(qctx, `INSERT INTO cloudapi_messages (id, recipient, state, attempts, node, first_at, last_at, error)
		VALUES (?, ?, ?, 0, '', NOW(6), NOW(6), ?)
		ON DUPLICATE KEY UPDATE state = VALUES(state), error = VALUES(error), last_at = NOW(6)`, id, to, stateFailed, onPrem)
	return err
}

// known reads the recorded state of ids: what a send of the batch before
// this one already settled.
func (t *Transport) known(ctx context.Context, ids []string) (map[string]record, error) {
	out := map[string]record{}
	if t.db == nil || len(ids) == 0 {
		return out, nil
	}
	args := make([]any, len(ids))
	q := `SELECT id, state, COALESCE(wamid, ''), COALESCE(error, '') FROM cloudapi_messages WHERE id IN (?`
	for i, id := range ids {
		args[i] = id
		if i > 0 {
			q += ",?"
		}
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := t.db.QueryContext(qctx, q+")", args...)
	if err != nil {
		return nil, fmt.Errorf("read the send records: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r record
		var id string
		if err := rows.Scan(&id, &r.state, &r.wamid, &r.err); err != nil {
			return nil, fmt.Errorf("read the send records: %w", err)
		}
		out[id] = r
	}
	return out, rows.Err()
}

// record is a cloudapi_messages row's state.
type record struct{ state, wamid, err string }

// onPremJSON encodes a failure for the coreapp's failed status.
func onPremJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
