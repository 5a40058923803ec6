package cloudapi

import (
	"context"
	"fmt"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Send implements transport.Transport.
func (t *Transport) Send(ctx context.Context, msgs []transport.Message) ([]transport.SendResult, error) {
	if _, err := t.Current(); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	return nil, fmt.Errorf("send: not written yet: %w", transport.ErrUnsupported)
}
