package cloudapi

import (
	"context"
	"errors"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// resolver is the Translate Resolver of a Transport: wamids from the
// engine's records (cloudapi_messages), media ids from cloudapi_media
// (uploading the file the first time).
type resolver struct{ t *Transport }

func (r resolver) WAMID(ctx context.Context, id string) (string, error) {
	if r.t.store == nil {
		return "", nil
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	recs, err := r.t.store.Load(qctx, []string{id})
	if err != nil {
		return "", err
	}
	return recs[id].WAMID, nil
}

// MediaID uploads under the claim (ops.go's MediaID, bounded by the
// claim's deadline); an upload the cluster no longer has is a BadMessage.
func (r resolver) MediaID(ctx context.Context, id string) (string, error) {
	c, err := r.t.Current()
	if err != nil {
		return "", err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	mid, err := r.t.ops.MediaID(ctx, c.sender(), id)
	if errors.Is(err, transport.ErrNoSuchItem) {
		return "", &BadMessage{Reason: err.Error()}
	}
	return mid, err
}
