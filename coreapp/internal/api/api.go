// Package api is the coreapp's internal port: one fasthttp server, open
// only to cluster members (the cluster secret), whose route table
// (routes.go) carries the users' requests the gateway forwards to the
// primary (messages, media, contacts, the network's REST calls in rest.go)
// and the masters' heartbeats, promotions, releases and demotions.
//
// It holds no state of its own: each route calls a stage through Deps (the
// acceptor, the media store, the contact checker, the claim holder), and
// the routes that do database work run in one of the request slots.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/multiconnect/multiconnect/coreapp/internal/reply"
	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

const (
	// maxBody bounds a member's request (a 100 MB media upload and its
	// headers).
	maxBody = 110 << 20
	// maxStrangerBody bounds what is read of a request without the
	// cluster secret: enough for its 403, never a stranger's upload.
	maxStrangerBody = 4 << 10
	// maxConnections caps the connections served at once (gateways,
	// masters, and whoever else connects); past it fasthttp answers 503
	// and closes. Each costs a few KiB of buffers when idle.
	maxConnections = 4096
)

// HTTP is the coreapp's internal port. The cluster secret is checked as
// soon as a request's headers are in, before its body is read: a request
// without it may carry at most maxStrangerBody bytes, so strangers cost
// neither memory nor time.
func (s *Server) HTTP() *fasthttp.Server {
	return &fasthttp.Server{
		Handler:            s.handler(),
		Name:               "multiconnect-coreapp",
		ReadTimeout:        30 * time.Second,
		MaxRequestBodySize: maxBody,
		Concurrency:        maxConnections,
		HeaderReceived: func(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
			if s.member(h) {
				return fasthttp.RequestConfig{}
			}
			return fasthttp.RequestConfig{MaxRequestBodySize: maxStrangerBody, ReadTimeout: 5 * time.Second}
		},
		// A request that failed before the handler (a stranger's large
		// body, bad framing) still gets the API's error shape.
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			ctx.SetConnectionClose()
			switch {
			case !s.member(&ctx.Request.Header):
				s.Log.Warn("refused internal request without a valid cluster secret", "remote", ctx.RemoteAddr().String(), "path", string(ctx.Path()), "err", err)
				reply.Error(ctx, apierror.AccessDenied, "internal port: cluster members only")
			case errors.Is(err, fasthttp.ErrBodyTooLarge):
				reply.Error(ctx, apierror.RequestNotValid, "the request body is too large")
				ctx.SetStatusCode(fasthttp.StatusRequestEntityTooLarge)
			default:
				reply.Error(ctx, apierror.RequestNotValid, "cannot read the request: "+err.Error())
			}
		},
	}
}

// member reports whether a request's headers carry the cluster secret (in
// its header, or as a bearer token).
func (s *Server) member(h *fasthttp.RequestHeader) bool {
	presented := string(h.Peek(cluster.SecretHeader))
	if presented == "" {
		presented = strings.TrimPrefix(string(h.Peek("Authorization")), "Bearer ")
	}
	return cluster.Authorized(presented, s.Secret)
}

// handler serves the coreapp's internal port (fasthttp: it carries the
// message path). Every request must carry the cluster secret: masters send
// heartbeats and promotions, the gateway forwards users' requests.
func (s *Server) handler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if !s.member(&ctx.Request.Header) {
			s.Log.Warn("refused internal request without a valid cluster secret", "remote", ctx.RemoteAddr().String(), "path", string(ctx.Path()))
			reply.Error(ctx, apierror.AccessDenied, "internal port: cluster members only")
			return
		}
		s.route(ctx)
	}
}

func (s *Server) serveHeartbeat(ctx *fasthttp.RequestCtx, _ map[string]string) {
	s.Heartbeats.Inc()
	reply.JSON(ctx, fasthttp.StatusOK, s.report())
}

func (s *Server) serveHealth(ctx *fasthttp.RequestCtx, _ map[string]string) {
	reply.JSON(ctx, fasthttp.StatusOK, s.health())
}

func (s *Server) serveDemote(ctx *fasthttp.RequestCtx, _ map[string]string) {
	s.Claim.Nudge()
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}

func (s *Server) serveMetrics(ctx *fasthttp.RequestCtx, _ map[string]string) {
	s.metricsOnce.Do(func() {
		s.metricsHandler = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{}))
	})
	s.MeasureDepth(ctx)
	s.metricsHandler(ctx)
}

func (s *Server) report() map[string]any {
	st := s.Claim.Status()
	return map[string]any{
		"node": s.ID.ID, "incarnation": s.ID.Incarnation, "primary": st.Primary, "shard": st.Shard,
		"epoch": st.Epoch, "connected": st.Connected, "connect_due": st.ConnectDue, "transport_ok": s.Plugins.Running(),
		"db_age_ms": s.Claim.DBAgeMS(), "off_ms": st.Off.Milliseconds(),
	}
}

func (s *Server) health() map[string]any {
	h := s.report()
	h["role"] = "coreapp"
	h["hostname"], h["container"] = s.ID.Hostname, s.ID.Container
	if e := s.transportError(); e != "" {
		h["transport_error"] = e
	}
	return h
}

// transportError is what the transport says is wrong while this coreapp
// is a primary that should be on the network: why it is not connected, or
// a problem it has while connected (the Cloud API's refused access token).
// /v1/health shows it in the node's errors until it is fixed.
func (s *Server) transportError() string {
	st := s.Claim.Status()
	if !st.Primary || !(st.Connected || st.ConnectDue) {
		return ""
	}
	var hl transport.Health
	err := transport.ErrNotRunning
	s.Plugins.With(func(t transport.Transport, _ uint64) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		hl, err = t.Health(ctx)
	})
	if err != nil {
		return "transport health: " + err.Error()
	}
	return hl.LastError
}

func (s *Server) promote(ctx *fasthttp.RequestCtx) {
	var req struct {
		Shard       *int  `json:"shard"`
		Epoch       int64 `json:"epoch"`
		Incarnation int64 `json:"incarnation"`
	}
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil || req.Shard == nil || req.Epoch <= 0 {
		reply.Error(ctx, apierror.RequestNotValid, "promote needs shard, epoch and incarnation")
		return
	}
	if req.Incarnation != s.ID.Incarnation {
		reply.Error(ctx, apierror.ParameterInvalid, "promotion addressed to another incarnation of this node")
		return
	}
	if s.Claim.Assign(*req.Shard, req.Epoch) {
		ctx.SetStatusCode(fasthttp.StatusAccepted)
	} else {
		reply.Error(ctx, apierror.ServiceUnavailable, "busy; the assignment will be found in the shard map")
	}
}

// release is the master's request that a primary it found not connected to
// the network give up its claim (see claim.Holder.giveUp). 200 with released
// true: the claim is handed back; false: it was dropped and lapses by itself.
func (s *Server) release(ctx *fasthttp.RequestCtx) {
	var req struct {
		Shard *int  `json:"shard"`
		Epoch int64 `json:"epoch"`
	}
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil || req.Shard == nil || req.Epoch <= 0 {
		reply.Error(ctx, apierror.RequestNotValid, "release needs shard and epoch")
		return
	}
	released, ok := s.Claim.Release(*req.Shard, req.Epoch, releaseWait)
	if !ok {
		reply.Error(ctx, apierror.ServiceUnavailable, "busy; the claim lapses by itself")
		return
	}
	reply.JSON(ctx, fasthttp.StatusOK, map[string]bool{"released": released})
}

// releaseWait bounds how long a release waits for the holder's loop, which
// may be inside a connect attempt (bounded by unhealthy_interval/2).
const releaseWait = 2 * time.Second
