package api

// The API surface a coreapp answers through its network beyond sending:
// marking an inbound message read, contacts' identities, first-party
// sticker packs. Each asks the network with a transport Call op.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/coreapp/internal/reply"
	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/openapi"
	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// callTimeout bounds one Call to the network.
const callTimeout = 10 * time.Second

// call performs op with the network through the plugin. On failure it
// answers the request and returns false.
func (s *Server) call(ctx *fasthttp.RequestCtx, op string, req any, res any) bool {
	body, err := json.Marshal(req)
	if err != nil {
		reply.Error(ctx, apierror.GenericError, err.Error())
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var out []byte
	err = transport.ErrNotRunning
	s.Plugins.With(func(t transport.Transport, _ uint64) { out, err = t.Call(cctx, op, body) })
	if err == nil && res != nil {
		if err = json.Unmarshal(out, res); err != nil {
			err = fmt.Errorf("the network's answer to %s: %w", op, err)
		}
	}
	switch {
	case err == nil:
		return true
	case errors.Is(err, transport.ErrNoSuchItem):
		reply.Error(ctx, apierror.NotFound, err.Error())
	case errors.Is(err, transport.ErrInvalidValue):
		reply.Error(ctx, apierror.ParameterInvalid, err.Error())
	case errors.Is(err, transport.ErrUnsupported):
		reply.Error(ctx, apierror.NotFound, "the messaging network does not offer this operation")
	default:
		s.Log.Warn("network call failed", "op", op, "err", err)
		reply.Error(ctx, apierror.ServiceUnavailable, "the network did not answer: "+err.Error())
	}
	return false
}

// validBody checks the request body against the OpenAPI schema name.
func validBody(ctx *fasthttp.RequestCtx, name string) bool {
	if inv := openapi.Validate(name, ctx.PostBody()); inv != nil {
		reply.Error(ctx, inv.Code, inv.Details)
		return false
	}
	return true
}

// serveMarkRead is PUT /v1/messages/{id} {"status":"read"}. The gateway sent it
// to the primary of the sender's shard, whose connection carries the
// sender's chat; a coreapp that is not (any more) answers 1018 and the
// gateway retries on a reloaded map.
func (s *Server) serveMarkRead(ctx *fasthttp.RequestCtx, p map[string]string) {
	id := p["message-id"]
	if !validBody(ctx, "MarkRead") {
		return
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var sender string
	err := s.DB.QueryRowContext(qctx, `SELECT sender FROM inbound_messages WHERE id = ?`, id).Scan(&sender)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		reply.Error(ctx, apierror.NotFound, fmt.Sprintf("no inbound message %q", id))
		return
	case err != nil:
		s.DBError("find inbound message", err)
		reply.Error(ctx, apierror.ServiceUnavailable, "could not read the message's sender")
		return
	}
	shards, _ := s.Settings.Layout()
	want, err := shard.For(sender, shards)
	if err != nil {
		reply.Error(ctx, apierror.GenericError, "the stored sender has no shard: "+err.Error())
		return
	}
	if st := s.Claim.Status(); !st.Primary || st.Shard != want {
		reply.Error(ctx, apierror.NotPrimaryCoreapp, fmt.Sprintf("the sender's shard is %d, not this coreapp's", want))
		return
	}
	if !s.call(ctx, transport.OpMarkRead, transport.MarkReadRequest{MessageID: id, From: sender}, nil) {
		return
	}
	reply.JSON(ctx, fasthttp.StatusOK, map[string]any{"meta": apierror.CurrentMeta()})
}

// identityWAID is the digits of a path's wa_id, or "" (answered 1009).
func identityWAID(ctx *fasthttp.RequestCtx, waid string) string {
	d := string(shard.Digits(waid))
	if d == "" || len(d) > 64 || len(d) != len(waid) {
		reply.Error(ctx, apierror.ParameterInvalid, fmt.Sprintf("wa_id %q is not a WhatsApp id (digits only)", waid))
		return ""
	}
	return d
}

// serveGetIdentity is GET /v1/contacts/{wa_id}/identity, the contact's latest
// identity as the network knows it, in the original's shape (contacts is
// an object there, not an array).
func (s *Server) serveGetIdentity(ctx *fasthttp.RequestCtx, p map[string]string) {
	d := identityWAID(ctx, p["wa_id"])
	if d == "" {
		return
	}
	var id transport.Identity
	if !s.call(ctx, transport.OpIdentity, transport.IdentityRequest{WAID: d}, &id) {
		return
	}
	reply.JSON(ctx, fasthttp.StatusOK, map[string]any{"contacts": id, "meta": apierror.CurrentMeta()})
}

// serveAckIdentity is PUT /v1/contacts/{wa_id}/identity {"hash"}: it
// acknowledges the contact's latest identity with the network.
func (s *Server) serveAckIdentity(ctx *fasthttp.RequestCtx, p map[string]string) {
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
	if !s.call(ctx, transport.OpIdentityAck, transport.IdentityRequest{WAID: d, Hash: req.Hash}, nil) {
		return
	}
	reply.JSON(ctx, fasthttp.StatusOK, map[string]any{"meta": apierror.CurrentMeta()})
}

// The original's read routes of /v1/stickerpacks: with ?namespace=whatsapp
// the network's first-party packs, without it the business's third-party
// packs, of which there are none here (creating them is not served).

func (s *Server) serveStickerpacks(ctx *fasthttp.RequestCtx, _ map[string]string) {
	cat, ok := s.stickerCatalogue(ctx)
	if !ok {
		return
	}
	out := []map[string]string{}
	for _, p := range cat.Packs {
		out = append(out, map[string]string{"id": p.ID})
	}
	reply.JSON(ctx, fasthttp.StatusOK, map[string]any{"stickerpacks": out, "meta": apierror.CurrentMeta()})
}

func (s *Server) serveStickerpack(ctx *fasthttp.RequestCtx, p map[string]string) {
	if pack := s.stickerpack(ctx, p["stickerpack-id"]); pack != nil {
		reply.JSON(ctx, fasthttp.StatusOK, map[string]any{"stickerpacks": []map[string]string{{"publisher": pack.Publisher, "name": pack.Name}}, "meta": apierror.CurrentMeta()})
	}
}

func (s *Server) serveStickers(ctx *fasthttp.RequestCtx, p map[string]string) {
	pack := s.stickerpack(ctx, p["stickerpack-id"])
	if pack == nil {
		return
	}
	out := []map[string]string{}
	for _, s := range pack.Stickers {
		out = append(out, map[string]string{"index": s.Index})
	}
	reply.JSON(ctx, fasthttp.StatusOK, map[string]any{"stickers": out, "meta": apierror.CurrentMeta()})
}

func (s *Server) serveSticker(ctx *fasthttp.RequestCtx, p map[string]string) {
	pack := s.stickerpack(ctx, p["stickerpack-id"])
	if pack == nil {
		return
	}
	for _, s := range pack.Stickers {
		if s.Index == p["sticker-index"] {
			reply.JSON(ctx, fasthttp.StatusOK, map[string]any{"stickers": []map[string]any{{"id": s.ID, "emojis": s.Emojis}}, "meta": apierror.CurrentMeta()})
			return
		}
	}
	reply.Error(ctx, apierror.NotFound, fmt.Sprintf("no sticker %q in pack %q", p["sticker-index"], pack.ID))
}

// stickerCatalogue is the packs of the request's namespace; on failure it
// has answered the request.
func (s *Server) stickerCatalogue(ctx *fasthttp.RequestCtx) (transport.Stickerpacks, bool) {
	var cat transport.Stickerpacks
	switch ns := string(ctx.QueryArgs().Peek("namespace")); ns {
	case "":
		return cat, true // third-party: none
	case "whatsapp":
		return cat, s.call(ctx, transport.OpStickerpacks, struct{}{}, &cat)
	default:
		reply.Error(ctx, apierror.ParameterInvalid, fmt.Sprintf("namespace %q: only whatsapp (first-party packs) is known", ns))
		return cat, false
	}
}

// stickerpack finds pack id in the request's namespace; nil: answered.
func (s *Server) stickerpack(ctx *fasthttp.RequestCtx, id string) *transport.Stickerpack {
	cat, ok := s.stickerCatalogue(ctx)
	if !ok {
		return nil
	}
	for i := range cat.Packs {
		if cat.Packs[i].ID == id {
			return &cat.Packs[i]
		}
	}
	reply.Error(ctx, apierror.NotFound, fmt.Sprintf("no sticker pack %q in namespace %q", id, string(ctx.QueryArgs().Peek("namespace"))))
	return nil
}
