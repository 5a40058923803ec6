package caddymodule

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/openapi"
)

// shardKey is the number whose shard a shard-bound request goes to: the
// recipient of POST /v1/messages, or the sender of the inbound message
// PUT /v1/messages/{id} marks read.
func (g *Gateway) shardKey(r *http.Request, rt route, body []byte) (string, *requestError) {
	if rt.name != "mark_read" {
		return messageRecipient(body)
	}
	return g.inboundSender(r.Context(), strings.TrimPrefix(r.URL.Path, "/v1/messages/"), body)
}

// inboundSender validates a mark-as-read body and finds who sent the
// inbound message id: coreapps record every inbound message's sender in
// inbound_messages (schema 9) before they acknowledge it to the network.
// An id not there is answered 1006 here, without a node.
func (g *Gateway) inboundSender(ctx context.Context, id string, body []byte) (string, *requestError) {
	if inv := openapi.Validate("MarkRead", body); inv != nil {
		return "", &requestError{0, inv.Code, inv.Details}
	}
	db := g.view.db.Load()
	if db == nil {
		return "", &requestError{0, apierror.ServiceUnavailable, "gateway not ready: no database yet"}
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var sender string
	err := db.QueryRowContext(qctx, `SELECT sender FROM inbound_messages WHERE id = ?`, id).Scan(&sender)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return "", &requestError{0, apierror.NotFound, fmt.Sprintf("no inbound message %q", id)}
	case err != nil:
		g.view.metrics.unroutable.WithLabelValues("no_database").Inc()
		return "", &requestError{0, apierror.ServiceUnavailable, "could not look up the message's sender; retry shortly"}
	}
	return sender, nil
}
