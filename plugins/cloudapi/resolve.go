package cloudapi

import (
	"context"
	"database/sql"
	"errors"
	"time"
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

func (r resolver) MediaID(ctx context.Context, id string) (string, error) {
	return r.t.cloudMediaID(ctx, id)
}
