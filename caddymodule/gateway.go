// Package caddymodule is the multiconnect gateway (the original product's
// Webapp) as a Caddy v2 module: it authenticates users, hashes each
// recipient to its shard, and hands Caddy's own reverse_proxy the primary
// coreapp of that shard, read from a shard map cached from MySQL.
//
// Build it into Caddy with
//
//	xcaddy build --with github.com/multiconnect/multiconnect/caddymodule
//
// or, in this repository, go build -o bin/ ./... (caddymodule/cmd/caddy).
package caddymodule

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/shardmap"
)

func init() {
	caddy.RegisterModule(Gateway{})
}

// Gateway is the multiconnect REST API on :9090. It answers the users
// routes, /v1/health and /metrics itself and sends everything else through
// Caddy's reverse_proxy to the node the route belongs to: the primary
// coreapp of the recipient's shard for POST /v1/messages, any primary
// coreapp for contacts and media, the primary master for settings,
// registration, shards, DB stats and support.
type Gateway struct {
	// The cluster's MySQL. Each field left empty takes the original
	// product's db.env variable: WA_DB_HOSTNAME, WA_DB_PORT,
	// WA_DB_USERNAME, WA_DB_PASSWORD, and MC_DB_NAME for the database name
	// (default multiconnect). Placeholders such as {env.X} are expanded.
	Database *DatabaseConfig `json:"database,omitempty"`

	// How often the cached shard map polls MySQL for a change (one
	// single-row read). The primary master pushes every change, so this
	// is only a safety net for a lost push. Default: 10s.
	RefreshInterval caddy.Duration `json:"refresh_interval,omitempty"`

	// How long a request whose node refused it (connection refused, or
	// "not the primary") waits for the shard map or master lease to name
	// another node before the error goes to the client. Default: 1s. Set
	// to -1 to retry only on a map already changed.
	RetryWait caddy.Duration `json:"retry_wait,omitempty"`

	// How long the gateway waits for a node's answer (its response
	// headers) once the request is sent. A node that does not answer in
	// time (frozen, hung) gets the client 502 with code 1000: the request
	// may have been applied, resend it with its idempotency key. Fills the
	// HTTP transport's response_header_timeout unless that is set.
	// Default: 20s, above every node's own bound (a coreapp answers an
	// accept within 10 s, a contact check within 10 s, the master a
	// registration within 15 s). Set to -1 to wait without a bound.
	ResponseTimeout caddy.Duration `json:"response_timeout,omitempty"`

	// The largest body the gateway reads to find the recipient; a larger
	// POST /v1/messages is refused with HTTP 413. Larger bodies of other
	// routes (media uploads) stream through. Default: 1048576 (1 MiB).
	MaxBodySize int64 `json:"max_body_size,omitempty"`

	// How long a bearer token from POST /v1/users/login stays valid.
	// Default: 168h (7 days, as in the original).
	TokenTTL caddy.Duration `json:"token_ttl,omitempty"`

	// How long a token MySQL confirmed is trusted without asking again;
	// a revoked token stops working within this bound. Default: 2s.
	TokenCache caddy.Duration `json:"token_cache,omitempty"`

	// While MySQL is unreachable, a token confirmed within this long keeps
	// working, so the gateway keeps serving. Default: 5m. Set to -1 to
	// refuse every token whose cache entry expired during an outage.
	TokenGrace caddy.Duration `json:"token_grace,omitempty"`

	// How many times a second this gateway may ask MySQL about a bearer
	// token it has not confirmed (tokens in its cache are re-checked
	// without this limit); past it, such a token gets 429 (1015) with
	// Retry-After. Tokens MySQL did not know are remembered, so repeating
	// one costs nothing. Default: 200 (the burst is the same). Set to -1
	// for no limit.
	TokenLookupRate int `json:"token_lookup_rate,omitempty"`

	// The key accepted as "Authorization: Apikey <key>" on /v1/health,
	// /metrics and /v1/stats. Default: the WA_API_KEY environment
	// variable; empty disables API keys.
	APIKey string `json:"api_key,omitempty"`

	// Failed logins allowed per client IP within login_window before
	// logins from it are refused with 429 (1015). Default: 30.
	LoginFailures int `json:"login_failures,omitempty"`

	// The sliding window for login_failures. Default: 1h.
	LoginWindow caddy.Duration `json:"login_window,omitempty"`

	// The bcrypt cost of stored passwords (4 to 31). Default: 10.
	BcryptCost int `json:"bcrypt_cost,omitempty"`

	// How long GET /v1/health waits for each node. Default: 1s.
	HealthTimeout caddy.Duration `json:"health_timeout,omitempty"`

	// Nodes not seen (no liveness write) for this long are left out of
	// /v1/health. Default: 1h.
	ForgetAfter caddy.Duration `json:"forget_after,omitempty"`

	// The Cloud API webhook (POST and GET /cloudapi/webhook, see
	// cloudapi.go): Meta's app secret, which signs every webhook, and the
	// verify token of its subscription check. Defaults: the
	// MC_CLOUDAPI_APP_SECRET and MC_CLOUDAPI_VERIFY_TOKEN environment
	// variables. Without an app secret the route answers 404.
	CloudAPIAppSecret   string `json:"cloudapi_app_secret,omitempty"`
	CloudAPIVerifyToken string `json:"cloudapi_verify_token,omitempty"`

	// When set (default: MC_CLOUDAPI_PHONE_NUMBER_ID), webhook changes of
	// another phone number of the same app are acknowledged and not stored.
	CloudAPIPhoneNumberID string `json:"cloudapi_phone_number_id,omitempty"`

	// A webhook whose newest event is older than this is refused as a
	// replay. It must exceed Meta's 7 days of retries. Default: 192h (8 days).
	CloudAPIMaxAge caddy.Duration `json:"cloudapi_max_age,omitempty"`

	// The reverse_proxy handler that carries requests to the nodes. It
	// must take its upstreams from the multiconnect source. Default:
	// {"handler": "reverse_proxy", "dynamic_upstreams": {"source": "multiconnect"}}.
	ProxyRaw json.RawMessage `json:"proxy,omitempty" caddy:"namespace=http.handlers inline_key=handler"`

	proxy        caddyhttp.MiddlewareHandler
	caddyCtx     caddy.Context // for the pki app (GET /v1/certificates/external/ca)
	view         *clusterView
	viewKey      viewKey
	log          *zap.Logger
	apiKey       string
	metrics      http.Handler
	registry     *prometheus.Registry // what /metrics reports (metricsjson.go)
	healthClient *http.Client
	dummyHash    func() []byte
	lookups      *rate.Limiter // nil: unlimited
	cloudAPI     cloudAPIConfig
}

// DatabaseConfig overrides db.env; see Gateway.Database.
type DatabaseConfig struct {
	Hostname string `json:"hostname,omitempty"`
	Port     string `json:"port,omitempty"`
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	Name     string `json:"name,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Gateway) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.multiconnect",
		New: func() caddy.Module { return new(Gateway) },
	}
}

// Provision sets defaults, loads the reverse_proxy and joins (or starts)
// the shared view of the cluster. It never waits for MySQL: until the
// database, the schema and the shard map are there, proxied routes answer
// 503 with the reason.
func (g *Gateway) Provision(ctx caddy.Context) error {
	g.log = ctx.Logger()
	g.caddyCtx = ctx
	setDefault(&g.RefreshInterval, shardmap.SafetyPoll)
	setDefault(&g.RetryWait, time.Second)
	setDefault(&g.ResponseTimeout, 20*time.Second)
	setDefault(&g.TokenTTL, 7*24*time.Hour)
	setDefault(&g.TokenCache, 2*time.Second)
	setDefault(&g.TokenGrace, 5*time.Minute)
	setDefault(&g.LoginWindow, time.Hour)
	setDefault(&g.HealthTimeout, time.Second)
	setDefault(&g.ForgetAfter, time.Hour)
	if g.MaxBodySize == 0 {
		g.MaxBodySize = 1 << 20
	}
	if g.LoginFailures == 0 {
		g.LoginFailures = 30
	}
	if g.BcryptCost == 0 {
		g.BcryptCost = bcrypt.DefaultCost
	}
	if g.TokenLookupRate == 0 {
		g.TokenLookupRate = 200
	}
	if g.TokenLookupRate > 0 {
		g.lookups = rate.NewLimiter(rate.Limit(g.TokenLookupRate), g.TokenLookupRate)
	}
	repl := caddy.NewReplacer()
	g.apiKey = os.Getenv("WA_API_KEY")
	if g.APIKey != "" {
		g.apiKey = repl.ReplaceAll(g.APIKey, "")
	}
	g.provisionCloudAPI(repl)
	cost := g.BcryptCost
	g.dummyHash = sync.OnceValue(func() []byte {
		h, _ := bcrypt.GenerateFromPassword([]byte("not anyone's password"), cost)
		return h
	})

	cfg, err := g.databaseConfig(repl)
	if err != nil {
		return err
	}

	if g.ProxyRaw == nil {
		g.ProxyRaw = caddyconfig.JSONModuleObject(defaultProxy(), "handler", "reverse_proxy", nil)
	}
	if g.ResponseTimeout > 0 {
		if g.ProxyRaw, err = withResponseTimeout(g.ProxyRaw, time.Duration(g.ResponseTimeout)); err != nil {
			return err
		}
	}
	mod, err := ctx.LoadModule(g, "ProxyRaw")
	if err != nil {
		return fmt.Errorf("loading the proxy handler: %w", err)
	}
	g.proxy = mod.(caddyhttp.MiddlewareHandler)
	rp, ok := g.proxy.(*reverseproxy.Handler)
	if !ok {
		return fmt.Errorf("proxy must be a reverse_proxy handler, not %T", g.proxy)
	}
	if len(rp.Upstreams) > 0 {
		return fmt.Errorf("the reverse_proxy inside multiconnect takes no upstreams (`to`): the shard map chooses them")
	}
	if _, ok := rp.DynamicUpstreams.(*Upstreams); !ok {
		return fmt.Errorf("the reverse_proxy inside multiconnect must use `dynamic multiconnect` for its upstreams")
	}

	g.view, g.viewKey, err = loadView(cfg, time.Duration(g.RefreshInterval), g.BcryptCost)
	if err != nil {
		return fmt.Errorf("multiconnect cluster view: %w", err)
	}
	g.log = withLevel(g.log, g.view.level)
	if err := g.view.metrics.register(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	g.registry = ctx.GetMetricsRegistry()
	g.metrics = promhttp.HandlerFor(g.registry, promhttp.HandlerOpts{})
	g.healthClient = &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: time.Duration(g.HealthTimeout)}).DialContext,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     time.Minute,
	}}
	return nil
}

// withResponseTimeout sets the HTTP transport's response_header_timeout in
// the reverse_proxy configuration raw to d, unless it is set already.
func withResponseTimeout(raw json.RawMessage, d time.Duration) (json.RawMessage, error) {
	var h map[string]json.RawMessage
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("proxy configuration: %w", err)
	}
	tr := map[string]any{"protocol": "http"}
	if t, ok := h["transport"]; ok {
		if err := json.Unmarshal(t, &tr); err != nil {
			return nil, fmt.Errorf("proxy transport: %w", err)
		}
		if tr["protocol"] != "http" {
			return raw, nil // another transport has its own settings
		}
	}
	if _, set := tr["response_header_timeout"]; set {
		return raw, nil
	}
	tr["response_header_timeout"] = d.String()
	b, err := json.Marshal(tr)
	if err != nil {
		return nil, fmt.Errorf("proxy transport: %w", err)
	}
	h["transport"] = b
	return json.Marshal(h)
}

// upstreamIdleConns is how many idle connections the default proxy keeps
// to each node. Caddy's default (32) is below the concurrency one gateway
// sees per coreapp under load (256 clients over 4 shards is 64 each), so
// connections were closed and dialled again all the time: 6 % of the
// gateway's CPU went to dialling, and each new connection cost the coreapp
// an accept. Idle connections cost a file descriptor and a goroutine each.
const upstreamIdleConns = 512

// defaultProxy is reverse_proxy with the multiconnect upstream source.
func defaultProxy() *reverseproxy.Handler {
	return &reverseproxy.Handler{
		DynamicUpstreamsRaw: caddyconfig.JSONModuleObject(Upstreams{}, "source", "multiconnect", nil),
		TransportRaw: caddyconfig.JSONModuleObject(&reverseproxy.HTTPTransport{
			KeepAlive: &reverseproxy.KeepAlive{MaxIdleConnsPerHost: upstreamIdleConns},
		}, "protocol", "http", nil),
	}
}

func setDefault(d *caddy.Duration, def time.Duration) {
	if *d == 0 {
		*d = caddy.Duration(def)
	}
}

// databaseConfig is db.env overlaid with the configured fields.
func (g *Gateway) databaseConfig(repl *caddy.Replacer) (database.Config, error) {
	cfg, err := database.FromEnv()
	if err != nil {
		return cfg, fmt.Errorf("multiconnect database: %w", err)
	}
	cfg.MaxOpen = database.GatewayPool
	d := g.Database
	if d == nil {
		return cfg, nil
	}
	if s := repl.ReplaceAll(d.Hostname, ""); s != "" {
		cfg.Host = s
	}
	if s := repl.ReplaceAll(d.Port, ""); s != "" {
		p, err := strconv.Atoi(s)
		if err != nil || p < 1 || p > 65535 {
			return cfg, fmt.Errorf("multiconnect database: port %q is not a port number", s)
		}
		cfg.Port = p
	}
	if s := repl.ReplaceAll(d.Username, ""); s != "" {
		cfg.User = s
	}
	if s := repl.ReplaceAll(d.Password, ""); s != "" {
		cfg.Password = s
	}
	if s := repl.ReplaceAll(d.Name, ""); s != "" {
		cfg.Name = s
	}
	return cfg, nil
}

// Validate refuses settings that cannot work.
func (g *Gateway) Validate() error {
	switch {
	case g.RefreshInterval < 0:
		return fmt.Errorf("refresh_interval must be positive")
	case g.MaxBodySize < 0:
		return fmt.Errorf("max_body_size must be positive")
	case g.TokenTTL < 0 || g.TokenCache < 0:
		return fmt.Errorf("token_ttl and token_cache must be positive")
	case g.LoginFailures < 1:
		return fmt.Errorf("login_failures must be at least 1")
	case g.LoginWindow < 0 || g.HealthTimeout < 0 || g.ForgetAfter < 0:
		return fmt.Errorf("login_window, health_timeout and forget_after must be positive")
	case g.CloudAPIMaxAge != 0 && time.Duration(g.CloudAPIMaxAge) <= 7*24*time.Hour:
		return fmt.Errorf("cloudapi_max_age must exceed 168h: Meta retries a webhook for 7 days, and a retry refused as stale is lost")
	case g.BcryptCost < bcrypt.MinCost || g.BcryptCost > bcrypt.MaxCost:
		return fmt.Errorf("bcrypt_cost must be between %d and %d", bcrypt.MinCost, bcrypt.MaxCost)
	}
	return nil
}

// Cleanup leaves the shared view; the last handler using it stops it.
func (g *Gateway) Cleanup() error {
	if g.view != nil {
		if _, err := views.Delete(g.viewKey); err != nil {
			return fmt.Errorf("closing the multiconnect cluster view: %w", err)
		}
	}
	if g.healthClient != nil {
		g.healthClient.CloseIdleConnections()
	}
	return nil
}

// ServeHTTP routes one API request.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// Only the gateway may speak for the cluster: a client's copy of the
	// secret and user headers is dropped before anything else looks at the
	// request.
	delete(r.Header, cluster.SecretHeader)
	delete(r.Header, cluster.UserHeader)

	p := cleanURLPath(r.URL)
	rt := classify(r.Method, p)
	if rt.target == toNowhere {
		g.view.metrics.routed.WithLabelValues(rt.name, rt.target.String()).Inc()
		writeError(w, 0, apierror.NotFound, "no route "+r.Method+" "+p)
		return nil
	}
	var who principal
	if rt.access != anyone {
		var rerr *requestError
		if who, rerr = g.authenticate(r, rt); rerr != nil {
			switch rerr.status {
			case http.StatusUnauthorized:
				w.Header().Set("WWW-Authenticate", `Bearer realm="multiconnect"`)
			case http.StatusTooManyRequests:
				w.Header().Set("Retry-After", "1")
			}
			rerr.write(w)
			return nil
		}
		logField(r, zap.String("user", who.username))
	}
	if rt.target != toGateway {
		return g.serveProxied(w, r, rt, who, next)
	}
	g.view.metrics.routed.WithLabelValues(rt.name, rt.target.String()).Inc()
	switch rt.name {
	case "login":
		g.login(w, r)
	case "logout":
		g.logout(w, r, who)
	case "users":
		g.users(w, r, who)
	case "health":
		g.health(w, r)
	case "metrics":
		g.serveMetrics(w, r)
	case "certificates":
		g.externalCA(w, r)
	case "openapi":
		serveOpenAPI(w, r)
	case "cloudapi_webhook":
		g.cloudAPIWebhook(w, r)
	case "method":
		_, allow := ownMatch(r.Method, p)
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, apierror.RequestNotValid, "method "+r.Method+" is not allowed on "+p)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Gateway)(nil)
	_ caddy.Validator             = (*Gateway)(nil)
	_ caddy.CleanerUpper          = (*Gateway)(nil)
	_ caddyhttp.MiddlewareHandler = (*Gateway)(nil)
)
