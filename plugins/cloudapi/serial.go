package cloudapi

// A stand-in for the delivery engine (branch c10-delivery) until it lands:
// one message after the other, no throughput limit, no reconciliation of
// unknown outcomes. Delete this file when delivery.New exists.

import (
	"context"
	"errors"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/delivery"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

type serialSender struct {
	p     delivery.Poster
	token func(*graphapi.Error)
}

func (s serialSender) Send(ctx context.Context, msgs []delivery.Outgoing) []delivery.Result {
	out := make([]delivery.Result, len(msgs))
	stop := false
	held := map[string]bool{}
	for i, m := range msgs {
		out[i] = delivery.Result{ID: m.ID, Outcome: delivery.Later}
		if stop || held[m.To] || ctx.Err() != nil {
			continue
		}
		wamid, err := s.p.Post(ctx, m)
		var ge *graphapi.Error
		switch {
		case err == nil:
			out[i].Outcome, out[i].WAMID = delivery.Sent, wamid
		case errors.As(err, &ge):
			switch graphapi.Classify(ge) {
			case graphapi.Permanent:
				out[i].Outcome, out[i].Err = delivery.Failed, ge
			case graphapi.TokenInvalid:
				s.token(ge)
				stop = true
			case graphapi.Throttle:
				stop = true
			default:
				held[m.To] = true
			}
		default:
			held[m.To] = true
		}
	}
	return out
}
