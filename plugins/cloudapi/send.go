package cloudapi

import (
	"context"
	"errors"
	"fmt"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/delivery"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/inbound"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// ErrLater is the batch error of a Send that left messages for later
// (limits, retries pending, outcomes being reconciled, the deadline).
var ErrLater = errors.New("some messages are to be sent later")

// Send implements transport.Transport. Each message is translated to the
// Cloud API's body and handed, in order, to the delivery engine, which
// posts it under the claim and decides on limits, retries and unknown
// outcomes. The Cloud API does not deduplicate, so what a Send settles is
// recorded (cloudapi_messages) and the coreapp's resend of a batch answers
// a sent message SendDuplicate and a failed one SendFailed without a
// request. A message left for later (delivery.Later) makes the batch fail
// (the coreapp sends it again, in order, with the rest): a message of its
// recipient after it in the batch is not sent before it.
func (t *Transport) Send(ctx context.Context, msgs []transport.Message) ([]transport.SendResult, error) {
	if _, err := t.Current(); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	if t.sender == nil {
		return nil, errors.New("send: no delivery engine")
	}
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	known, err := t.known(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	results := make([]transport.SendResult, len(msgs))
	var out []delivery.Outgoing
	var index []int // msgs[index[j]] is out[j]
	held := map[string]bool{}
	later := 0
	res := resolver{t}
	for i, m := range msgs {
		results[i].ID = m.ID
		to := digits(m.To)
		if held[to] {
			later++ // an earlier message of the recipient waits: so does this one
			continue
		}
		switch r := known[m.ID]; r.state {
		case stateSent:
			results[i].Status = transport.SendDuplicate
			continue
		case stateFailed:
			results[i].Status, results[i].Error = transport.SendFailed, r.err
			continue
		}
		if m.ID == "" {
			results[i].Status, results[i].Error = transport.SendFailed, "missing id"
			continue
		}
		body, err := Translate(ctx, m.ID, m.To, m.Body, res)
		var bm *BadMessage
		switch {
		case errors.As(err, &bm):
			reason := transport.SendError(transport.StatusError{Code: apierror.GenericError, Title: "Generic error", Details: bm.Error()})
			if rerr := t.recordFailed(ctx, m.ID, to, reason); rerr != nil {
				return nil, fmt.Errorf("send: record the failure of %s: %w", m.ID, rerr)
			}
			results[i].Status, results[i].Error = transport.SendFailed, reason
			continue
		case err != nil:
			t.log.Warn("message not translated; sending it later", "id", m.ID, "err", err)
			held[to] = true
			later++
			continue
		}
		out = append(out, delivery.Outgoing{ID: m.ID, To: to, Body: body})
		index = append(index, i)
	}
	var sent, failed int
	if len(out) > 0 {
		rs := t.sender.Send(ctx, out)
		if len(rs) != len(out) {
			return nil, fmt.Errorf("send: the delivery engine answered %d results for %d messages", len(rs), len(out))
		}
		for j, r := range rs {
			i := index[j]
			switch r.Outcome {
			case delivery.Sent:
				results[i].Status = transport.SendAccepted
				sent++
			case delivery.Failed:
				reason := transport.SendError(failure(r))
				if err := t.recordFailed(ctx, r.ID, out[j].To, reason); err != nil {
					return nil, fmt.Errorf("send: record the failure of %s: %w", r.ID, err)
				}
				results[i].Status, results[i].Error = transport.SendFailed, reason
				failed++
			default:
				later++
			}
		}
	}
	if later > 0 {
		return nil, fmt.Errorf("send: %d sent, %d failed, %d of %d left for the next attempt: %w", sent, failed, later, len(msgs), ErrLater)
	}
	return results, nil
}

// failure is the original's error for a message the engine failed: the
// Graph error's code mapped to the On-Premises one (the same table as the
// failed statuses of webhooks), else generic.
func failure(r delivery.Result) transport.StatusError {
	if r.Err == nil {
		return transport.StatusError{Code: apierror.GenericError, Title: "Generic error", Details: r.Detail}
	}
	ce := inbound.CloudError{Code: r.Err.Code, Title: r.Err.Message}
	if r.Err.ErrorData != nil && r.Err.ErrorData.Details != "" {
		ce.ErrorData = &struct {
			Details string `json:"details,omitempty"`
		}{r.Err.ErrorData.Details}
	}
	se := inbound.OnPremError(ce)
	if r.Detail != "" && se.Details == "" {
		se.Details = r.Detail
	}
	return se
}
