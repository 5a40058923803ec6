package api

import (
	"net/url"
	"os"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/coreapp/internal/reply"
	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/routetable"
)

// coreRoute is one route of the coreapp's port. The table below is the
// router itself: what "coreapp routes" prints (for the test that compares
// the served routes with the OpenAPI document) is what is served.
type coreRoute struct {
	method, path string // path in the document's form: /v1/media/{media-id}
	// user routes arrive from users through the gateway: only a primary
	// answers them; anything else answers 1018 so the gateway reloads its
	// shard map and retries elsewhere.
	user bool
	// slot routes do their database work in one of the bounded request
	// slots (the message path bounds its own).
	slot  bool
	serve func(s *Server, ctx *fasthttp.RequestCtx, params map[string]string)
}

// coreRoutes is matched in order: the message path first.
var coreRoutes = []coreRoute{
	{"POST", "/v1/messages", true, false, func(s *Server, ctx *fasthttp.RequestCtx, _ map[string]string) { s.Accept.Serve(ctx) }},
	{"POST", "/v1/contacts", true, true, func(s *Server, ctx *fasthttp.RequestCtx, _ map[string]string) { s.Contacts.Serve(ctx) }},
	{"POST", "/v1/media", true, true, func(s *Server, ctx *fasthttp.RequestCtx, _ map[string]string) { s.Media.Upload(ctx) }},
	{"GET", "/v1/media/{media-id}", true, true, func(s *Server, ctx *fasthttp.RequestCtx, p map[string]string) { s.Media.Download(ctx, p["media-id"]) }},
	{"DELETE", "/v1/media/{media-id}", true, true, func(s *Server, ctx *fasthttp.RequestCtx, p map[string]string) { s.Media.Remove(ctx, p["media-id"]) }},
	// rest.go: what the network answers beyond sending.
	{"PUT", "/v1/messages/{message-id}", true, true, (*Server).serveMarkRead},
	{"GET", "/v1/contacts/{wa_id}/identity", true, true, (*Server).serveGetIdentity},
	{"PUT", "/v1/contacts/{wa_id}/identity", true, true, (*Server).serveAckIdentity},
	{"GET", "/v1/stickerpacks", true, true, (*Server).serveStickerpacks},
	{"GET", "/v1/stickerpacks/{stickerpack-id}", true, true, (*Server).serveStickerpack},
	{"GET", "/v1/stickerpacks/{stickerpack-id}/stickers", true, true, (*Server).serveStickers},
	{"GET", "/v1/stickerpacks/{stickerpack-id}/stickers/{sticker-index}", true, true, (*Server).serveSticker},
	{"POST", "/internal/heartbeat", false, false, (*Server).serveHeartbeat},
	{"GET", "/internal/health", false, false, (*Server).serveHealth},
	{"POST", "/internal/promote", false, false, func(s *Server, ctx *fasthttp.RequestCtx, _ map[string]string) { s.promote(ctx) }},
	{"POST", "/internal/release", false, false, func(s *Server, ctx *fasthttp.RequestCtx, _ map[string]string) { s.release(ctx) }},
	{"POST", "/internal/demote", false, false, (*Server).serveDemote},
	{"POST", "/internal/events-stored", false, false, (*Server).serveEventsStored},
	{"GET", "/metrics", false, false, (*Server).serveMetrics},
}

// route serves a member's request from coreRoutes: 404 (1006) for a path
// no route has, 405 (1025, with Allow) for a method the path does not take.
func (s *Server) route(ctx *fasthttp.RequestCtx) {
	method, path := string(ctx.Method()), string(ctx.Path())
	// A parameter may hold an escaped '/' (a Cloud API wamid is base64,
	// and an inbound message's id is its wamid): such a path is matched as
	// sent, and its parameters unescaped after.
	raw, _, _ := strings.Cut(string(ctx.Request.URI().PathOriginal()), "?")
	escapedSlash := strings.Contains(strings.ToLower(raw), "%2f")
	var allow []string
	for i := range coreRoutes {
		rt := &coreRoutes[i]
		params, ok := routetable.Match(rt.path, path)
		if escapedSlash {
			if params, ok = routetable.Match(rt.path, raw); ok {
				for k, v := range params {
					if u, err := url.PathUnescape(v); err == nil {
						params[k] = u
					}
				}
			}
		}
		if !ok {
			continue
		}
		if rt.method != method {
			allow = append(allow, rt.method)
			continue
		}
		if rt.user && !s.Claim.Status().Primary {
			reply.Error(ctx, apierror.NotPrimaryCoreapp, "this coreapp is not the primary of any shard")
			return
		}
		if rt.slot {
			if !s.Slots.Acquire(ctx) {
				return
			}
			defer s.Slots.Release()
		}
		rt.serve(s, ctx, params)
		return
	}
	if len(allow) > 0 {
		ctx.Response.Header.Set("Allow", strings.Join(allow, ", "))
		reply.Error(ctx, apierror.RequestNotValid, "method "+method+" is not allowed on "+path+"; use "+strings.Join(allow, ", "))
		ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
		return
	}
	reply.Error(ctx, apierror.NotFound, "no such route: "+method+" "+path)
}

// PrintRoutes is "coreapp routes".
func PrintRoutes() error {
	rs := make([]routetable.Route, len(coreRoutes))
	for i, rt := range coreRoutes {
		rs[i] = routetable.Route{Method: rt.method, Path: rt.path}
	}
	return routetable.Print(os.Stdout, rs)
}
