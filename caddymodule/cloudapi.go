package caddymodule

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/inbound"
)

// The Cloud API's webhooks (the transport-cloudapi plugin's inbound path):
// Meta calls GET /cloudapi/webhook to verify the subscription and POSTs
// every status and inbound message there, signed with the app secret. The
// gateway checks the signature, stores each event in cloudapi_inbound for
// its contact's shard and answers 200 only once that is committed, so an
// event Meta saw acknowledged is in MySQL whatever crashes next; anything
// else Meta retries (for up to 7 days). Then it tells each shard's primary
// coreapp (eventswake.go), whose plugin reads the new rows.

// cloudAPIWebhookPath is the URL path to give Meta (the app's webhook
// callback URL is https://<gateway host>/cloudapi/webhook).
const cloudAPIWebhookPath = "/cloudapi/webhook"

// cloudAPIMaxBody is the least body size the webhook takes whatever
// max_body_size says: Meta batches up to 1,000 updates in one webhook, a
// few megabytes at most, and a refused batch would come back forever.
const cloudAPIMaxBody = 8 << 20

// cloudAPIConfig is the webhook's configuration after placeholders.
type cloudAPIConfig struct {
	secret, verifyToken, phoneNumberID string
	maxAge                             time.Duration
}

// provisionCloudAPI reads the webhook's settings, each defaulting to its
// MC_CLOUDAPI_* environment variable (the plugin's own configuration).
func (g *Gateway) provisionCloudAPI(repl *caddy.Replacer) {
	or := func(v, env string) string {
		if v == "" {
			v = "{env." + env + "}"
		}
		return repl.ReplaceAll(v, "")
	}
	g.cloudAPI = cloudAPIConfig{
		secret:        or(g.CloudAPIAppSecret, "MC_CLOUDAPI_APP_SECRET"),
		verifyToken:   or(g.CloudAPIVerifyToken, "MC_CLOUDAPI_VERIFY_TOKEN"),
		phoneNumberID: or(g.CloudAPIPhoneNumberID, "MC_CLOUDAPI_PHONE_NUMBER_ID"),
		maxAge:        time.Duration(g.CloudAPIMaxAge),
	}
	if g.cloudAPI.maxAge == 0 {
		g.cloudAPI.maxAge = inbound.DefaultMaxAge
	}
}

// cloudAPIWebhook answers GET (verification) and POST (events).
func (g *Gateway) cloudAPIWebhook(w http.ResponseWriter, r *http.Request) {
	cfg := g.cloudAPI
	if cfg.secret == "" {
		// Off unless configured: without the app secret nothing could
		// be told from a forgery.
		writeError(w, 0, apierror.NotFound, "no route "+r.Method+" "+cloudAPIWebhookPath+": the Cloud API webhook is not configured (cloudapi_app_secret or MC_CLOUDAPI_APP_SECRET)")
		return
	}
	if r.Method != http.MethodPost {
		g.cloudAPIVerify(w, r)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max(g.MaxBodySize, cloudAPIMaxBody)))
	if err != nil {
		var tooLarge *http.MaxBytesError
		g.view.metrics.cloudAPI.WithLabelValues("invalid").Inc()
		if errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, apierror.ParameterInvalid, "the webhook body is larger than 8 MiB and max_body_size")
			return
		}
		writeError(w, http.StatusBadRequest, apierror.RequestNotValid, "reading the webhook body: "+err.Error())
		return
	}
	if err := inbound.Verify([]byte(cfg.secret), body, r.Header.Get(inbound.SignatureHeader)); err != nil {
		result := "bad_signature"
		if errors.Is(err, inbound.ErrUnsigned) {
			result = "unsigned"
		}
		g.view.metrics.cloudAPI.WithLabelValues(result).Inc()
		g.log.Warn("cloudapi webhook refused", zap.String("remote", r.RemoteAddr), zap.Error(err))
		writeError(w, http.StatusForbidden, apierror.AccessDenied, err.Error())
		return
	}
	p, err := inbound.Parse(body)
	if err != nil {
		g.view.metrics.cloudAPI.WithLabelValues("invalid").Inc()
		writeError(w, http.StatusBadRequest, apierror.RequestNotValid, err.Error())
		return
	}
	db, m := g.view.db.Load(), g.view.currentMap()
	if db == nil || m == nil {
		// Meta retries; by then the gateway has its shard map.
		g.view.metrics.cloudAPI.WithLabelValues("not_ready").Inc()
		writeError(w, http.StatusServiceUnavailable, apierror.ServiceUnavailable, "the gateway is not ready: "+g.view.notReady())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	tr, err := inbound.Translate(ctx, p, cfg.phoneNumberID, inbound.LookupIn(db))
	if err != nil {
		g.log.Error("cloudapi webhook: looking up message ids failed; Meta will retry", zap.Error(err))
		g.view.metrics.cloudAPI.WithLabelValues("failed").Inc()
		writeError(w, http.StatusInternalServerError, apierror.GenericError, "the database could not be read; retry")
		return
	}
	if err := inbound.CheckFresh(tr.Records, time.Now(), cfg.maxAge); err != nil {
		g.view.metrics.cloudAPI.WithLabelValues("stale").Inc()
		g.log.Warn("cloudapi webhook refused", zap.String("remote", r.RemoteAddr), zap.Error(err))
		writeError(w, http.StatusForbidden, apierror.AccessDenied, err.Error())
		return
	}
	if c := g.view.settings.Load(); c != nil && c.Loaded() {
		// Statuses no webhook wants are acknowledged and not stored (the
		// coreapp would drop them after storing, reading and carrying
		// them); until the settings are read, everything is stored and
		// the coreapp decides, as before. After CheckFresh: a replay is
		// refused whatever it carries.
		if n := tr.LeaveOut(c.Get().StatusCallbackWanted); n > 0 {
			g.view.metrics.cloudAPIUnwanted.Add(float64(n))
		}
	}
	for _, why := range tr.Skipped {
		g.log.Info("cloudapi webhook: event left out", zap.String("why", why))
	}
	for _, e := range tr.Errors {
		g.log.Warn("cloudapi webhook: Meta reports an error", zap.Int("code", e.Code), zap.String("title", e.Title), zap.String("message", e.Message))
	}
	// The contact's shard is computed under the count the store reads in
	// its own transaction, not the cached map's, which can be stale across
	// a re-shard.
	added, shards, err := inbound.StoreForContacts(ctx, db, tr.Records)
	if err != nil {
		// Nothing of it is stored (one transaction): Meta sends it again.
		g.log.Error("cloudapi webhook: storing failed; Meta will retry", zap.Error(err))
		g.view.metrics.cloudAPI.WithLabelValues("failed").Inc()
		writeError(w, http.StatusInternalServerError, apierror.GenericError, "the events could not be stored; retry")
		return
	}
	// Committed: the shards' primaries read the new rows at once.
	g.view.wakes.wake(shards)
	g.view.metrics.cloudAPI.WithLabelValues("stored").Inc()
	g.log.Debug("cloudapi webhook stored", zap.Int("events", len(tr.Records)), zap.Int("new", added))
	b, _ := json.Marshal(map[string]int{"events": len(tr.Records), "stored": added})
	writeJSON(w, http.StatusOK, b)
}

// cloudAPIVerify answers Meta's subscription check: hub.mode=subscribe and
// the configured verify token get hub.challenge back as text.
func (g *Gateway) cloudAPIVerify(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	token := q.Get("hub.verify_token")
	if g.cloudAPI.verifyToken == "" || q.Get("hub.mode") != "subscribe" ||
		subtle.ConstantTimeCompare([]byte(token), []byte(g.cloudAPI.verifyToken)) != 1 {
		writeError(w, http.StatusForbidden, apierror.AccessDenied, "hub.mode is not subscribe or hub.verify_token is not the configured verify token")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff") // the challenge is the caller's text
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, q.Get("hub.challenge"))
}
