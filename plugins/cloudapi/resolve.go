package cloudapi

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// resolver is the Translate Resolver of a Transport: wamids from
// cloudapi_messages, media ids from the media cache (uploading).
type resolver struct{ t *Transport }

func (r resolver) WAMID(ctx context.Context, id string) (string, error) {
	if r.t.db == nil {
		return "", nil
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var w sql.NullString
	err := r.t.db.QueryRowContext(qctx, `SELECT wamid FROM cloudapi_messages WHERE id = ?`, id).Scan(&w)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return w.String, err
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
