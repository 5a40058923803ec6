package cloudapi

import (
	"context"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Call implements transport.Transport: the account operations (ops.go).
func (t *Transport) Call(ctx context.Context, op string, body []byte) ([]byte, error) {
	return t.call(ctx, op, body)
}

// RequestCode implements transport.Transport (ops.go).
func (t *Transport) RequestCode(ctx context.Context, req transport.RegistrationRequest) (transport.RegistrationResult, error) {
	return t.requestCode(ctx, req)
}

// VerifyCode implements transport.Transport (ops.go).
func (t *Transport) VerifyCode(ctx context.Context, req transport.VerifyRequest) error {
	return t.verifyCode(ctx, req)
}

// CheckContacts implements transport.Transport (ops.go).
func (t *Transport) CheckContacts(ctx context.Context, inputs []string) ([]transport.ContactResult, error) {
	return t.checkContacts(ctx, inputs)
}
