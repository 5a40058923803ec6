package cloudapi

// Stand-ins until ops.go (branch c10-ops) defines call, requestCode,
// verifyCode and checkContacts: delete this file when it lands.

import (
	"context"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

func (t *Transport) call(context.Context, string, []byte) ([]byte, error) {
	return nil, transport.ErrUnsupported
}

func (t *Transport) requestCode(context.Context, transport.RegistrationRequest) (transport.RegistrationResult, error) {
	return transport.RegistrationResult{}, transport.ErrUnsupported
}

func (t *Transport) verifyCode(context.Context, transport.VerifyRequest) error {
	return transport.ErrUnsupported
}

func (t *Transport) checkContacts(context.Context, []string) ([]transport.ContactResult, error) {
	return nil, transport.ErrUnsupported
}
