package main

// The API surface a coreapp answers through its network beyond sending:
// marking an inbound message read, contacts' identities, first-party
// sticker packs. Each asks the network with a transport Call op.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/openapi"
	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// callTimeout bounds one Call to the network.
const callTimeout = 10 * time.Second

// indexInbound records who sent each inbound message of batch
// (inbound_messages), retrying while the database refuses and this node is
// a primary. It reports whether the batch may be acknowledged: false
// leaves its events with the network for the shard's next holder.
func (w *callbackWriter) indexInbound(ctx context.Context, batch []*callback) bool {
	var sb strings.Builder
	var args []any
	for _, cb := range batch {
		if cb.kind != kindInbound || cb.netSeq == 0 {
			continue
		}
		id := inboundID(cb.payload)
		if id == "" || len(id) > 128 {
			continue
		}
		if len(args) > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`(?,?,NOW(6))`)
		args = append(args, id, cb.recipient)
	}
	if len(args) == 0 {
		return true
	}
	// A network's ids can start again (simnet's after a restart): the
	// newest sender of an id is the one a client was told about.
	q := `INSERT INTO inbound_messages (id, sender, received_at) VALUES ` + sb.String() +
		` ON DUPLICATE KEY UPDATE sender = VALUES(sender), received_at = VALUES(received_at)`
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := w.c.db.ExecContext(qctx, q, args...)
		cancel()
		if err == nil {
			return true
		}
		w.c.dbError("index inbound messages", err)
		if !w.c.holder.status().Primary || !sleep(ctx, callbackRetry) {
			return false
		}
	}
}

// inboundID is the message id of a stored inbound callback's payload.
func inboundID(payload []byte) string {
	var p struct {
		Message struct {
			ID string `json:"id"`
		} `json:"message"`
	}
	_ = json.Unmarshal(payload, &p)
	return p.Message.ID
}

// securityNotice reports whether a stored inbound callback is the
// network's user_identity_changed system message, which the webhook gets
// only with show_security_notifications.
func securityNotice(payload []byte) bool {
	var p struct {
		Message struct {
			System struct {
				Type string `json:"type"`
			} `json:"system"`
		} `json:"message"`
	}
	_ = json.Unmarshal(payload, &p)
	return p.Message.System.Type == "user_identity_changed"
}

// call performs op with the network through the plugin. On failure it
// answers the request and returns false.
func (c *Coreapp) call(ctx *fasthttp.RequestCtx, op string, req any, res any) bool {
	body, err := json.Marshal(req)
	if err != nil {
		writeError(ctx, apierror.GenericError, err.Error())
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var out []byte
	err = errNoTransport
	c.plugins.With(func(t transport.Transport, _ uint64) { out, err = t.Call(cctx, op, body) })
	if err == nil && res != nil {
		if err = json.Unmarshal(out, res); err != nil {
			err = fmt.Errorf("the network's answer to %s: %w", op, err)
		}
	}
	switch {
	case err == nil:
		return true
	case errors.Is(err, transport.ErrNoSuchItem):
		writeError(ctx, apierror.NotFound, err.Error())
	case errors.Is(err, transport.ErrInvalidValue):
		writeError(ctx, apierror.ParameterInvalid, err.Error())
	case errors.Is(err, transport.ErrUnsupported):
		writeError(ctx, apierror.NotFound, "the messaging network does not offer this operation")
	default:
		c.log.Warn("network call failed", "op", op, "err", err)
		writeError(ctx, apierror.ServiceUnavailable, "the network did not answer: "+err.Error())
	}
	return false
}

// validBody checks the request body against the OpenAPI schema name.
func validBody(ctx *fasthttp.RequestCtx, name string) bool {
	if inv := openapi.Validate(name, ctx.PostBody()); inv != nil {
		writeError(ctx, inv.Code, inv.Details)
		return false
	}
	return true
}

// serveMarkRead is PUT /v1/messages/{id} {"status":"read"}. The gateway sent it
// to the primary of the sender's shard, whose connection carries the
// sender's chat; a coreapp that is not (any more) answers 1018 and the
// gateway retries on a reloaded map.
func (c *Coreapp) serveMarkRead(ctx *fasthttp.RequestCtx, p map[string]string) {
	id := p["message-id"]
	if !validBody(ctx, "MarkRead") {
		return
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var sender string
	err := c.db.QueryRowContext(qctx, `SELECT sender FROM inbound_messages WHERE id = ?`, id).Scan(&sender)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		writeError(ctx, apierror.NotFound, fmt.Sprintf("no inbound message %q", id))
		return
	case err != nil:
		c.dbError("find inbound message", err)
		writeError(ctx, apierror.ServiceUnavailable, "could not read the message's sender")
		return
	}
	shards, _ := c.settings.Layout()
	want, err := shard.For(sender, shards)
	if err != nil {
		writeError(ctx, apierror.GenericError, "the stored sender has no shard: "+err.Error())
		return
	}
	if st := c.holder.status(); !st.Primary || st.Shard != want {
		writeError(ctx, apierror.NotPrimaryCoreapp, fmt.Sprintf("the sender's shard is %d, not this coreapp's", want))
		return
	}
	if !c.call(ctx, transport.OpMarkRead, transport.MarkReadRequest{MessageID: id, From: sender}, nil) {
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"meta": apierror.CurrentMeta()})
}

// identityWAID is the digits of a path's wa_id, or "" (answered 1009).
func identityWAID(ctx *fasthttp.RequestCtx, waid string) string {
	d := string(shard.Digits(waid))
	if d == "" || len(d) > 64 || len(d) != len(waid) {
		writeError(ctx, apierror.ParameterInvalid, fmt.Sprintf("wa_id %q is not a WhatsApp id (digits only)", waid))
		return ""
	}
	return d
}

// serveGetIdentity is GET /v1/contacts/{wa_id}/identity, the contact's latest
// identity as the network knows it, in the original's shape (contacts is
// an object there, not an array).
func (c *Coreapp) serveGetIdentity(ctx *fasthttp.RequestCtx, p map[string]string) {
	d := identityWAID(ctx, p["wa_id"])
	if d == "" {
		return
	}
	var id transport.Identity
	if !c.call(ctx, transport.OpIdentity, transport.IdentityRequest{WAID: d}, &id) {
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"contacts": id, "meta": apierror.CurrentMeta()})
}

// serveAckIdentity is PUT /v1/contacts/{wa_id}/identity {"hash"}: it
// acknowledges the contact's latest identity with the network.
func (c *Coreapp) serveAckIdentity(ctx *fasthttp.RequestCtx, p map[string]string) {
	if !validBody(ctx, "IdentityAck") {
		return
	}
	d := identityWAID(ctx, p["wa_id"])
	if d == "" {
		return
	}
	var req struct {
		Hash string `json:"hash"`
	}
	_ = json.Unmarshal(ctx.PostBody(), &req) // validated above
	if !c.call(ctx, transport.OpIdentityAck, transport.IdentityRequest{WAID: d, Hash: req.Hash}, nil) {
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"meta": apierror.CurrentMeta()})
}

// The original's read routes of /v1/stickerpacks: with ?namespace=whatsapp
// the network's first-party packs, without it the business's third-party
// packs, of which there are none here (creating them is not served).

func (c *Coreapp) serveStickerpacks(ctx *fasthttp.RequestCtx, _ map[string]string) {
	cat, ok := c.stickerCatalogue(ctx)
	if !ok {
		return
	}
	out := []map[string]string{}
	for _, p := range cat.Packs {
		out = append(out, map[string]string{"id": p.ID})
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"stickerpacks": out, "meta": apierror.CurrentMeta()})
}

func (c *Coreapp) serveStickerpack(ctx *fasthttp.RequestCtx, p map[string]string) {
	if pack := c.stickerpack(ctx, p["stickerpack-id"]); pack != nil {
		writeJSON(ctx, fasthttp.StatusOK, map[string]any{"stickerpacks": []map[string]string{{"publisher": pack.Publisher, "name": pack.Name}}, "meta": apierror.CurrentMeta()})
	}
}

func (c *Coreapp) serveStickers(ctx *fasthttp.RequestCtx, p map[string]string) {
	pack := c.stickerpack(ctx, p["stickerpack-id"])
	if pack == nil {
		return
	}
	out := []map[string]string{}
	for _, s := range pack.Stickers {
		out = append(out, map[string]string{"index": s.Index})
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"stickers": out, "meta": apierror.CurrentMeta()})
}

func (c *Coreapp) serveSticker(ctx *fasthttp.RequestCtx, p map[string]string) {
	pack := c.stickerpack(ctx, p["stickerpack-id"])
	if pack == nil {
		return
	}
	for _, s := range pack.Stickers {
		if s.Index == p["sticker-index"] {
			writeJSON(ctx, fasthttp.StatusOK, map[string]any{"stickers": []map[string]any{{"id": s.ID, "emojis": s.Emojis}}, "meta": apierror.CurrentMeta()})
			return
		}
	}
	writeError(ctx, apierror.NotFound, fmt.Sprintf("no sticker %q in pack %q", p["sticker-index"], pack.ID))
}

// stickerCatalogue is the packs of the request's namespace; on failure it
// has answered the request.
func (c *Coreapp) stickerCatalogue(ctx *fasthttp.RequestCtx) (transport.Stickerpacks, bool) {
	var cat transport.Stickerpacks
	switch ns := string(ctx.QueryArgs().Peek("namespace")); ns {
	case "":
		return cat, true // third-party: none
	case "whatsapp":
		return cat, c.call(ctx, transport.OpStickerpacks, struct{}{}, &cat)
	default:
		writeError(ctx, apierror.ParameterInvalid, fmt.Sprintf("namespace %q: only whatsapp (first-party packs) is known", ns))
		return cat, false
	}
}

// stickerpack finds pack id in the request's namespace; nil: answered.
func (c *Coreapp) stickerpack(ctx *fasthttp.RequestCtx, id string) *transport.Stickerpack {
	cat, ok := c.stickerCatalogue(ctx)
	if !ok {
		return nil
	}
	for i := range cat.Packs {
		if cat.Packs[i].ID == id {
			return &cat.Packs[i]
		}
	}
	writeError(ctx, apierror.NotFound, fmt.Sprintf("no sticker pack %q in namespace %q", id, string(ctx.QueryArgs().Peek("namespace"))))
	return nil
}
