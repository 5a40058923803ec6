package cloudapi

import (
	"context"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Call implements transport.Transport: the account operations (ops.go), and
// OpEventsStored, which wakes the Events pollers (events.go).
// While the plugin holds a claim, an op's requests end at its deadline
// like every other request of the shard.
func (t *Transport) Call(ctx context.Context, op string, body []byte) ([]byte, error) {
	if op == transport.OpEventsStored {
		return t.eventsStored(body)
	}
	if c, err := t.Current(); err == nil {
		var cancel context.CancelFunc
		ctx, cancel = c.bound(ctx)
		defer cancel()
	}
	return t.ops.call(ctx, op, body)
}

// CheckContacts implements transport.Transport. The Cloud API has no
// contact check: it sends to any number and reports an unreachable one in
// the message's failed status. So every input is valid with its digits as
// wa_id, as the original answered in its last versions; an input without
// digits is invalid.
func (t *Transport) CheckContacts(_ context.Context, inputs []string) ([]transport.ContactResult, error) {
	out := make([]transport.ContactResult, len(inputs))
	for i, in := range inputs {
		out[i] = transport.ContactResult{Input: in, Status: transport.ContactInvalid}
		if d := digits(in); d != "" {
			out[i].Status, out[i].WAID = transport.ContactValid, d
		}
	}
	return out, nil
}

// RequestCode implements transport.Transport (registration.go).
func (t *Transport) RequestCode(ctx context.Context, req transport.RegistrationRequest) (transport.RegistrationResult, error) {
	return t.ops.requestCode(ctx, req)
}

// VerifyCode implements transport.Transport (registration.go).
func (t *Transport) VerifyCode(ctx context.Context, req transport.VerifyRequest) error {
	return t.ops.verifyCode(ctx, req)
}
