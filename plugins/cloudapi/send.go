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
// outcomes. The Cloud API does not deduplicate, so the engine records each
// attempt (cloudapi_messages): a batch the coreapp sends again is answered
// from the records for what was settled (sent, failed) without a second
// request. A message left for later (delivery.Later) fails the batch, so
// the coreapp sends it again, in order, with the rest; the engine sends no
// message of a recipient before an earlier one left for later.
func (t *Transport) Send(ctx context.Context, msgs []transport.Message) ([]transport.SendResult, error) {
	if _, err := t.Current(); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	if t.sender == nil {
		return nil, errors.New("send: no delivery engine")
	}
	settled, err := t.settled(ctx, msgs)
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
		if m.ID == "" {
			results[i].Status, results[i].Error = transport.SendFailed, "missing id"
			continue
		}
		var body []byte
		if !settled[m.ID] {
			// (A settled message is answered from its record: it is
			// not translated again, which could now fail.)
			var err error
			body, err = Translate(ctx, m.ID, m.To, m.Body, res)
			var bm *BadMessage
			switch {
			case errors.As(err, &bm):
				results[i].Status = transport.SendFailed
				results[i].Error = transport.SendError(transport.StatusError{Code: apierror.GenericError, Title: "Generic error", Details: bm.Error()})
				continue
			case err != nil:
				t.log.Warn("message not translated; sending it later", "id", m.ID, "err", err)
				held[to] = true
				later++
				continue
			}
		}
		out = append(out, delivery.Outgoing{ID: m.ID, To: to, Body: body})
		index = append(index, i)
	}
	var sent, failed int
	var why string
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
				results[i].Status, results[i].Error = transport.SendFailed, transport.SendError(failure(r))
				failed++
			default:
				if why == "" {
					why = r.Detail
				}
				later++
			}
		}
	}
	if later > 0 {
		return nil, fmt.Errorf("send: %d sent, %d failed, %d of %d left for the next attempt (%s): %w", sent, failed, later, len(msgs), why, ErrLater)
	}
	return results, nil
}

// settled tells which messages already have a final record (sent or
// failed): the engine answers them from it.
func (t *Transport) settled(ctx context.Context, msgs []transport.Message) (map[string]bool, error) {
	out := map[string]bool{}
	if t.store == nil {
		return out, nil
	}
	ids := make([]string, 0, len(msgs))
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	recs, err := t.store.Load(ctx, ids)
	if err != nil {
		return nil, err
	}
	for id, r := range recs {
		if r.State == delivery.StateSent || r.State == delivery.StateFailed {
			out[id] = true
		}
	}
	return out, nil
}

// failure is the original's error for a message the engine failed: the
// Graph error's code mapped to the On-Premises one (the table of the
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
	return inbound.OnPremError(ce)
}
