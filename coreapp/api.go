package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

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

// server is the coreapp's internal port. The cluster secret is checked as
// soon as a request's headers are in, before its body is read: a request
// without it may carry at most maxStrangerBody bytes, so strangers cost
// neither memory nor time.
func (c *Coreapp) server() *fasthttp.Server {
	return &fasthttp.Server{
		Handler:            c.handler(),
		Name:               "multiconnect-coreapp",
		ReadTimeout:        30 * time.Second,
		MaxRequestBodySize: maxBody,
		Concurrency:        maxConnections,
		HeaderReceived: func(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
			if c.member(h) {
				return fasthttp.RequestConfig{}
			}
			return fasthttp.RequestConfig{MaxRequestBodySize: maxStrangerBody, ReadTimeout: 5 * time.Second}
		},
		// A request that failed before the handler (a stranger's large
		// body, bad framing) still gets the API's error shape.
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			ctx.SetConnectionClose()
			switch {
			case !c.member(&ctx.Request.Header):
				c.log.Warn("refused internal request without a valid cluster secret", "remote", ctx.RemoteAddr().String(), "path", string(ctx.Path()), "err", err)
				writeError(ctx, apierror.AccessDenied, "internal port: cluster members only")
			case errors.Is(err, fasthttp.ErrBodyTooLarge):
				writeError(ctx, apierror.RequestNotValid, "the request body is too large")
				ctx.SetStatusCode(fasthttp.StatusRequestEntityTooLarge)
			default:
				writeError(ctx, apierror.RequestNotValid, "cannot read the request: "+err.Error())
			}
		},
	}
}

// member reports whether a request's headers carry the cluster secret (in
// its header, or as a bearer token).
func (c *Coreapp) member(h *fasthttp.RequestHeader) bool {
	presented := string(h.Peek(cluster.SecretHeader))
	if presented == "" {
		presented = strings.TrimPrefix(string(h.Peek("Authorization")), "Bearer ")
	}
	return cluster.Authorized(presented, c.secret)
}

// handler serves the coreapp's internal port (fasthttp: it carries the
// message path). Every request must carry the cluster secret: masters send
// heartbeats and promotions, the gateway forwards users' requests.
func (c *Coreapp) handler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if !c.member(&ctx.Request.Header) {
			c.log.Warn("refused internal request without a valid cluster secret", "remote", ctx.RemoteAddr().String(), "path", string(ctx.Path()))
			writeError(ctx, apierror.AccessDenied, "internal port: cluster members only")
			return
		}
		c.route(ctx)
	}
}

func (c *Coreapp) serveHeartbeat(ctx *fasthttp.RequestCtx, _ map[string]string) {
	c.metrics.heartbeats.Inc()
	writeJSON(ctx, fasthttp.StatusOK, c.report())
}

func (c *Coreapp) serveHealth(ctx *fasthttp.RequestCtx, _ map[string]string) {
	writeJSON(ctx, fasthttp.StatusOK, c.health())
}

func (c *Coreapp) serveDemote(ctx *fasthttp.RequestCtx, _ map[string]string) {
	select {
	case c.holder.nudge <- struct{}{}:
	default:
	}
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}

func (c *Coreapp) serveMetrics(ctx *fasthttp.RequestCtx, _ map[string]string) {
	c.metricsOnce.Do(func() {
		c.metricsHandler = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(c.metrics.reg, promhttp.HandlerOpts{}))
	})
	c.measureDepth(ctx)
	c.metricsHandler(ctx)
}

func (c *Coreapp) report() map[string]any {
	st := c.holder.status()
	return map[string]any{
		"node": c.id.ID, "incarnation": c.id.Incarnation, "primary": st.Primary, "shard": st.Shard,
		"epoch": st.Epoch, "connected": st.Connected, "connect_due": st.ConnectDue, "transport_ok": c.plugins.Running(),
		"db_age_ms": c.holder.dbAgeMS(), "off_ms": st.Off.Milliseconds(),
	}
}

func (c *Coreapp) health() map[string]any {
	h := c.report()
	h["role"] = "coreapp"
	h["hostname"], h["container"] = c.id.Hostname, c.id.Container
	if e := c.transportError(); e != "" {
		h["transport_error"] = e
	}
	return h
}

// transportError is what the transport says is wrong while this coreapp
// is a primary that should be on the network: why it is not connected, or
// a problem it has while connected (the Cloud API's refused access token).
// /v1/health shows it in the node's errors until it is fixed.
func (c *Coreapp) transportError() string {
	st := c.holder.status()
	if !st.Primary || !(st.Connected || st.ConnectDue) {
		return ""
	}
	var hl transport.Health
	err := errNoTransport
	c.plugins.With(func(t transport.Transport, _ uint64) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		hl, err = t.Health(ctx)
	})
	if err != nil {
		return "transport health: " + err.Error()
	}
	return hl.LastError
}

func (c *Coreapp) promote(ctx *fasthttp.RequestCtx) {
	var req struct {
		Shard       *int  `json:"shard"`
		Epoch       int64 `json:"epoch"`
		Incarnation int64 `json:"incarnation"`
	}
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil || req.Shard == nil || req.Epoch <= 0 {
		writeError(ctx, apierror.RequestNotValid, "promote needs shard, epoch and incarnation")
		return
	}
	if req.Incarnation != c.id.Incarnation {
		writeError(ctx, apierror.ParameterInvalid, "promotion addressed to another incarnation of this node")
		return
	}
	select {
	case c.holder.assign <- assignment{shard: *req.Shard, epoch: req.Epoch}:
		ctx.SetStatusCode(fasthttp.StatusAccepted)
	default:
		writeError(ctx, apierror.ServiceUnavailable, "busy; the assignment will be found in the shard map")
	}
}

// release is the master's request that a primary it found not connected to
// the network give up its claim (see holder.giveUp). 200 with released
// true: the claim is handed back; false: it was dropped and lapses by itself.
func (c *Coreapp) release(ctx *fasthttp.RequestCtx) {
	var req struct {
		Shard *int  `json:"shard"`
		Epoch int64 `json:"epoch"`
	}
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil || req.Shard == nil || req.Epoch <= 0 {
		writeError(ctx, apierror.RequestNotValid, "release needs shard and epoch")
		return
	}
	r := releaseReq{shard: *req.Shard, epoch: req.Epoch, done: make(chan bool, 1)}
	select {
	case c.holder.release <- r:
	case <-time.After(releaseWait):
		writeError(ctx, apierror.ServiceUnavailable, "busy; the claim lapses by itself")
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]bool{"released": <-r.done})
}

// releaseWait bounds how long a release waits for the holder's loop, which
// may be inside a connect attempt (bounded by unhealthy_interval/2).
const releaseWait = 2 * time.Second

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, _ := json.Marshal(v)
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(b)
}

func writeError(ctx *fasthttp.RequestCtx, code int, details string) {
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(apierror.Status(code))
	ctx.SetBody(apierror.JSON(code, details))
}
