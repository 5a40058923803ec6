package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/internal/shardmap"
)

// idempotencyHeader is the coreapps' key header for POST /v1/messages,
// named in answers that tell a client to resend.
const idempotencyHeader = "X-Idempotency-Key"

// choice is where one attempt of a request goes.
type choice struct {
	addrs []string // dial addresses handed to reverse_proxy
	shard int      // -1 unless the route is recipient-bound
	epoch int64    // the shard's assignment epoch, to notice a re-promotion of the same node
}

// choose picks the node(s) for rt from the cached shard map or the master
// lease, leaving out exclude (the node that just failed).
func (g *Gateway) choose(ctx context.Context, rt route, recipient, exclude string) (choice, *requestError) {
	v := g.view
	switch rt.target {
	case toMaster:
		addr, err := v.primaryMaster(ctx)
		if err != nil {
			v.metrics.unroutable.WithLabelValues("no_master").Inc()
			return choice{}, &requestError{0, apierror.ServiceUnavailable, "no primary master to send this command to: " + err.Error()}
		}
		return choice{addrs: []string{addr}, shard: -1}, nil
	case toShard:
		m := v.currentMap()
		s, err := shard.For(recipient, m.Shards)
		if err != nil {
			return choice{}, &requestError{0, apierror.ParameterInvalid, err.Error()}
		}
		e := m.Entries[s]
		if e.NodeID == "" {
			v.metrics.unroutable.WithLabelValues("no_primary").Inc()
			return choice{}, &requestError{0, apierror.ServiceUnavailable, fmt.Sprintf("shard %d has no primary coreapp at the moment; retry shortly", s)}
		}
		return choice{addrs: []string{e.NodeID}, shard: s, epoch: e.Epoch}, nil
	default: // toCoreapp
		all := g.coreapps(v.currentMap())
		addrs := all
		if exclude != "" {
			addrs = make([]string, 0, len(all))
			for _, a := range all {
				if a != exclude {
					addrs = append(addrs, a)
				}
			}
		}
		if len(addrs) == 0 {
			v.metrics.unroutable.WithLabelValues("no_primary").Inc()
			return choice{}, &requestError{0, apierror.ServiceUnavailable, "no primary coreapp at the moment; retry shortly"}
		}
		return choice{addrs: addrs, shard: -1}, nil
	}
}

// coreappSet is the distinct primaries of one shard map, computed once per map.
type coreappSet struct {
	m     *shardmap.Map
	addrs []string
}

// coreapps returns the primary coreapps of m: the healthy ones, since the
// masters keep only healthy coreapps in the map. reverse_proxy's load
// balancing policy (random by default) picks among them.
func (g *Gateway) coreapps(m *shardmap.Map) []string {
	if cs := g.view.coreapps.Load(); cs != nil && cs.m == m {
		return cs.addrs
	}
	seen := make(map[string]bool, len(m.Entries))
	var addrs []string
	for _, e := range m.Entries {
		if e.NodeID != "" && !seen[e.NodeID] {
			seen[e.NodeID] = true
			addrs = append(addrs, e.NodeID)
		}
	}
	g.view.coreapps.Store(&coreappSet{m: m, addrs: addrs})
	return addrs
}

// moved reports whether what choose would now pick differs from the failed
// attempt c (which went to failed).
func (g *Gateway) moved(ctx context.Context, rt route, recipient string, c choice, failed string) bool {
	switch rt.target {
	case toMaster:
		addr, err := g.view.primaryMaster(ctx)
		return err == nil && addr != failed
	case toShard:
		// Looked up again rather than by c.shard: the shard count may have
		// changed in between.
		e, err := g.view.currentMap().Lookup(recipient)
		return err == nil && e.NodeID != "" && (e.NodeID != failed || e.Epoch != c.epoch)
	default:
		for _, a := range g.coreapps(g.view.currentMap()) {
			if a != failed {
				return true
			}
		}
		return false
	}
}

// awaitFailover reloads the shard map (or rereads the master lease) after
// an attempt failed at failedAt, and waits up to retry_wait for it to name
// another node. It reports whether a second attempt may go somewhere new.
func (g *Gateway) awaitFailover(ctx context.Context, rt route, recipient string, c choice, failed string, failedAt time.Time) bool {
	v := g.view
	changed := v.mapChanged()
	if rt.target != toMaster {
		v.refreshMap(ctx, failedAt)
	}
	if g.moved(ctx, rt, recipient, c, failed) {
		return true
	}
	if g.RetryWait <= 0 {
		return false
	}
	deadline := time.NewTimer(time.Duration(g.RetryWait))
	defer deadline.Stop()
	var poll <-chan time.Time
	if rt.target == toMaster {
		// The lease is not polled in the background; reread it while waiting.
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		poll, changed = t.C, nil
	}
	for {
		select {
		case <-changed:
			changed = v.mapChanged()
		case <-poll:
		case <-deadline.C:
			return false
		case <-ctx.Done():
			return false
		}
		if g.moved(ctx, rt, recipient, c, failed) {
			return true
		}
	}
}

// serveProxied sends r through Caddy's reverse_proxy to the node its route
// names, retrying once, on a freshly loaded map, when the node refused the
// connection or answered that it is not the primary (1018 from a coreapp,
// 1017 from a master): in both cases the node did not act on the request,
// so a second attempt cannot apply it twice.
func (g *Gateway) serveProxied(w http.ResponseWriter, r *http.Request, rt route, who principal, next caddyhttp.Handler) error {
	v := g.view
	if reason := v.notReady(); reason != "" {
		v.metrics.unroutable.WithLabelValues("not_ready").Inc()
		writeError(w, 0, apierror.ServiceUnavailable, "gateway not ready: "+reason)
		return nil
	}
	// A declared trailer could smuggle the secret or the user past the
	// header checks; no route of the API uses trailers.
	for _, h := range []string{cluster.SecretHeader, cluster.UserHeader} {
		if _, ok := r.Trailer[h]; ok {
			writeError(w, 0, apierror.RequestNotValid, "the "+h+" trailer is not allowed")
			return nil
		}
	}

	// Bodies small enough are read first, so the second attempt can resend
	// them; larger ones (media uploads) stream, and are retried only when
	// the failed attempt never read them.
	var body []byte
	buffered := false
	var recipient string
	if rt.target == toShard {
		var rerr *requestError
		if body, rerr = readBody(r, g.MaxBodySize); rerr != nil {
			rerr.write(w)
			return nil
		}
		if recipient, rerr = g.shardKey(r, rt, body); rerr != nil {
			rerr.write(w)
			return nil
		}
		buffered = true
	} else if r.ContentLength >= 0 && r.ContentLength <= g.MaxBodySize {
		var rerr *requestError
		if body, rerr = readBody(r, g.MaxBodySize); rerr != nil {
			rerr.write(w)
			return nil
		}
		buffered = true
	}
	var tracked *trackedBody
	if !buffered {
		tracked = &trackedBody{ReadCloser: r.Body}
		r.Body = tracked
	}

	// The nodes trust the cluster secret, not the user's token: the token
	// stays here, and the secret is removed again before Caddy logs the
	// request. The user's name goes along: a coreapp scopes idempotency
	// keys by it.
	auth, hadAuth := r.Header["Authorization"]
	delete(r.Header, "Authorization")
	r.Header[cluster.SecretHeader] = *v.secret.Load()
	if who.username != "" {
		r.Header.Set(cluster.UserHeader, who.username)
	}
	defer func() {
		delete(r.Header, cluster.SecretHeader)
		delete(r.Header, cluster.UserHeader)
		if hadAuth {
			r.Header["Authorization"] = auth
		}
	}()

	expected := apierror.NotPrimaryCoreapp
	if rt.target == toMaster {
		expected = apierror.NotPrimaryMaster
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	var exclude string
	for attempt := 0; ; attempt++ {
		c, rerr := g.choose(r.Context(), rt, recipient, exclude)
		if rerr != nil {
			rerr.write(w)
			return nil
		}
		if attempt == 0 {
			v.metrics.routed.WithLabelValues(rt.name, rt.target.String()).Inc()
			if c.shard >= 0 {
				v.metrics.shardReqs.WithLabelValues(shardLabel(c.shard)).Inc()
				logField(r, zap.Int("shard", c.shard))
			}
		}
		caddyhttp.SetVar(r.Context(), upstreamsVar, c.addrs)
		if buffered {
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			r.TransferEncoding = nil
			// With GetBody, Go's transport may resend on a fresh connection
			// when a pooled one to a node that just died fails before any
			// byte was written; without it that case is a 502.
			r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		}
		hw := holdingWriter{w: w, canHold: attempt == 0, expected: expected}
		if hw.canHold {
			hw.snapshot = w.Header().Clone()
		}
		failedAt := time.Now()
		err := g.proxy.ServeHTTP(&hw, r, next)
		if attempt == 0 {
			reason := ""
			switch {
			case hw.held && hw.heldCode() == expected:
				reason = "not_primary"
			case err != nil && !hw.wrote && isDialError(err) && (buffered || !tracked.read.Load()):
				reason = "refused"
			}
			if reason != "" {
				failed := c.addrs[0]
				if repl != nil {
					if hp, ok := repl.GetString("http.reverse_proxy.upstream.hostport"); ok && hp != "" {
						failed = hp
					}
				}
				if g.awaitFailover(r.Context(), rt, recipient, c, failed, failedAt) {
					v.metrics.retries.WithLabelValues(reason).Inc()
					g.log.Debug("retrying on a reloaded shard map", zap.String("reason", reason), zap.String("failed", failed), zap.String("route", rt.name))
					hw.reset()
					exclude = failed
					continue
				}
			}
		}
		hw.release()
		if err == nil || hw.wrote {
			return err
		}
		return g.proxyError(w, err, c)
	}
}

// proxyError answers for a proxy attempt that got no response, in the API's
// error shape rather than Caddy's empty 502.
func (g *Gateway) proxyError(w http.ResponseWriter, err error, c choice) error {
	where := "node " + c.addrs[0]
	if c.shard >= 0 {
		where = fmt.Sprintf("the primary coreapp of shard %d (%s)", c.shard, c.addrs[0])
	}
	if isDialError(err) {
		g.view.metrics.unroutable.WithLabelValues("refused").Inc()
		writeError(w, 0, apierror.ServiceUnavailable, where+" is unreachable; retry shortly")
		return nil
	}
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode == 499 { // the client went away; nobody to answer
		return nil
	}
	// 502 for every failure after the request was sent, a timeout too
	// (Caddy would say 504): clients handle one answer, "may have been
	// applied, resend with the idempotency key".
	what := "failed while handling the request"
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		what = fmt.Sprintf("did not answer within response_timeout (%s)", time.Duration(g.ResponseTimeout))
	}
	g.log.Warn("proxy error after the request was sent", zap.String("upstream", c.addrs[0]), zap.Error(err))
	writeError(w, http.StatusBadGateway, apierror.GenericError, where+" "+what+"; it may have been applied: resend with the same "+idempotencyHeader)
	return nil
}

func isDialError(err error) bool {
	var de reverseproxy.DialError
	return errors.As(err, &de)
}

var shardLabels = func() []string {
	out := make([]string, 32)
	for i := range out {
		out[i] = strconv.Itoa(i)
	}
	return out
}()

func shardLabel(s int) string {
	if s >= 0 && s < len(shardLabels) {
		return shardLabels[s]
	}
	return strconv.Itoa(s)
}

// logField adds f to Caddy's access log entry for r.
func logField(r *http.Request, f zap.Field) {
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Add(f)
	}
}

// trackedBody records whether a streamed body was read, which decides
// whether the request may be sent a second time.
type trackedBody struct {
	io.ReadCloser
	read atomic.Bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.read.Store(true)
	}
	return n, err
}

// maxHeld bounds the body of a held 503: a "not a primary" error is a few
// hundred bytes; anything much larger is some other answer, passed on.
const maxHeld = 16 << 10

// holdingWriter passes a response through, except a 503 (or 421) on an
// attempt that may be retried: that one is held back so its body can be
// checked for 1017/1018 and, if the retry happens, discarded.
type holdingWriter struct {
	w        http.ResponseWriter
	canHold  bool
	expected int
	snapshot http.Header // the headers before the attempt, restored on retry
	held     bool
	status   int
	wrote    bool // a status line went to the client
	buf      bytes.Buffer
}

func (h *holdingWriter) Header() http.Header { return h.w.Header() }

func (h *holdingWriter) WriteHeader(code int) {
	if h.wrote || h.held {
		return
	}
	if code >= 100 && code < 200 {
		h.w.WriteHeader(code)
		return
	}
	if h.canHold && (code == http.StatusServiceUnavailable || code == http.StatusMisdirectedRequest) {
		h.held, h.status = true, code
		return
	}
	h.wrote = true
	h.w.WriteHeader(code)
}

func (h *holdingWriter) Write(b []byte) (int, error) {
	if !h.wrote && !h.held {
		h.WriteHeader(http.StatusOK)
	}
	if h.held {
		if h.buf.Len()+len(b) <= maxHeld {
			return h.buf.Write(b)
		}
		h.release()
	}
	return h.w.Write(b)
}

// FlushError flushes what went to the client; a held response stays held.
func (h *holdingWriter) FlushError() error {
	if !h.wrote {
		return nil
	}
	return http.NewResponseController(h.w).Flush()
}

// Unwrap lets http.ResponseController reach the connection (deadlines, hijack).
func (h *holdingWriter) Unwrap() http.ResponseWriter { return h.w }

// heldCode is the first error code in the held body, or 0.
func (h *holdingWriter) heldCode() int {
	var doc struct {
		Errors []struct {
			Code int `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal(h.buf.Bytes(), &doc) != nil || len(doc.Errors) == 0 {
		return 0
	}
	return doc.Errors[0].Code
}

// release sends a held response on to the client.
func (h *holdingWriter) release() {
	if !h.held {
		return
	}
	h.held, h.wrote = false, true
	h.w.WriteHeader(h.status)
	h.w.Write(h.buf.Bytes())
	h.buf.Reset()
}

// reset discards a held response and the headers it set, before a retry.
func (h *holdingWriter) reset() {
	hdr := h.w.Header()
	for k := range hdr {
		delete(hdr, k)
	}
	for k, vv := range h.snapshot {
		hdr[k] = vv
	}
	h.held = false
	h.buf.Reset()
}
