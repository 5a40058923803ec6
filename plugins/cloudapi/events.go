package cloudapi

import (
	"context"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Stream names the numbering of the events the plugin pushes: the seq of
// cloudapi_inbound, per shard.
const Stream = "cloudapi-inbound"

// Events implements transport.Transport.
func (t *Transport) Events(ctx context.Context) (<-chan transport.Event, error) {
	ch := make(chan transport.Event)
	go func() { <-ctx.Done(); close(ch) }()
	return ch, nil
}

// Ack implements transport.Transport.
func (t *Transport) Ack(ctx context.Context, shard int, conn int64, seq uint64) error {
	return transport.ErrNotConnected
}
