package caddymodule

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

// TestCaddyfileExample runs the repository's Caddyfile.example unchanged
// (its port and admin endpoint come from the environment it documents),
// with the database from the original's WA_DB_* variables, and checks it is
// a working gateway: login, sharded sends, Caddy's and the module's
// metrics, and request logs through Caddy's logger.
func TestCaddyfileExample(t *testing.T) {
	const shards = 2
	c := newTestCluster(t, shards)
	var primaries []*stubNode
	for s := 0; s < shards; s++ {
		n := c.addNode("coreapp")
		n.shard.Store(int64(s))
		c.assign(s, n, 1)
		primaries = append(primaries, n)
	}
	port := freePort(t)
	env := []string{"MC_GATEWAY_PORT=" + strconv.Itoa(port), "MC_GATEWAY_ADMIN=off", "WA_API_KEY=" + testAPIKey}
	g := c.runCaddy(port, env, map[string]string{"Authorization": "Apikey " + testAPIKey},
		"run", "--config", filepath.Join(repoRoot(), "Caddyfile.example"), "--adapter", "caddyfile")
	token := g.loginAdmin()
	for s := 0; s < shards; s++ {
		to := recipientFor(t, s, shards, 7)
		st, body := g.do("POST", "/v1/messages", messageBody(to), bearer(token))
		if st != 201 || !strings.Contains(body, primaries[s].addr) {
			t.Errorf("shard %d: HTTP %d %s, want 201 from %s", s, st, body, primaries[s].addr)
		}
	}
	st, body := g.do("POST", "/v1/messages", `{"to":"15551234567","pad":"`+strings.Repeat("x", 1<<20)+`"}`, bearer(token))
	expect(t, "a body over the example's 1MiB", st, body, 413, apierror.RequestNotValid)

	st, metrics := g.do("GET", "/metrics?format=prometheus", "", map[string]string{"Authorization": "Apikey " + testAPIKey})
	if st != 200 {
		t.Fatalf("/metrics: HTTP %d", st)
	}
	for _, want := range []string{
		`multiconnect_gateway_requests_total{route="messages",target="shard"}`,
		`multiconnect_gateway_shard_requests_total{shard="1"}`,
		`multiconnect_gateway_shard_map_version`,
		`caddy_http_requests_total`, // Caddy's own, in the same registry
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// The access log is Caddy's, as JSON lines, with our fields.
	time.Sleep(100 * time.Millisecond)
	f, err := os.Open(g.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	found := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), c.secret) {
			t.Errorf("the cluster secret is in Caddy's log: %s", sc.Text())
		}
		var entry struct {
			Logger  string `json:"logger"`
			Msg     string `json:"msg"`
			Status  int    `json:"status"`
			User    string `json:"user"`
			Shard   *int   `json:"shard"`
			Request struct {
				URI string `json:"uri"`
			} `json:"request"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) != nil || !strings.HasPrefix(entry.Logger, "http.log.access") {
			continue
		}
		if entry.Request.URI == "/v1/messages" && entry.Status == 201 && entry.User == "admin" && entry.Shard != nil {
			found++
		}
	}
	if found != shards {
		t.Errorf("%d access log entries for the sends with user and shard, want %d", found, shards)
	}
}

// TestJSONConfigDefaults runs Caddy from a JSON config holding nothing but
// {"handler": "multiconnect"}: every default must make a working gateway
// that reads the database from db.env.
func TestJSONConfigDefaults(t *testing.T) {
	c := newTestCluster(t, 1)
	n := c.addNode("coreapp")
	n.shard.Store(0)
	c.assign(0, n, 1)
	port := freePort(t)
	cfg := fmt.Sprintf(`{
		"admin": {"disabled": true},
		"apps": {"http": {"servers": {"api": {
			"listen": [":%d"],
			"routes": [{"handle": [{"handler": "multiconnect"}]}]
		}}}}
	}`, port)
	path := filepath.Join(t.TempDir(), "caddy.json")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	g := c.runCaddy(port, []string{"WA_API_KEY=" + testAPIKey}, map[string]string{"Authorization": "Apikey " + testAPIKey},
		"run", "--config", path)
	token := g.loginAdmin()
	st, body := g.do("POST", "/v1/messages", messageBody("15551234567"), bearer(token))
	expect(t, "send through the defaults", st, body, 201, 0)
	st, body = g.do("POST", "/v1/messages", `{"to":"15551234567","pad":"`+strings.Repeat("x", 1<<20)+`"}`, bearer(token))
	expect(t, "a body over the default 1MiB", st, body, 413, apierror.RequestNotValid)
}

func parseGateway(t *testing.T, src string) (*Gateway, error) {
	t.Helper()
	g := new(Gateway)
	err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(src))
	return g, err
}

// TestCaddyfileSyntax checks that every documented setting lands in its
// JSON field and that mistakes are refused with a message, not ignored.
func TestCaddyfileSyntax(t *testing.T) {
	g, err := parseGateway(t, `multiconnect {
		database {
			hostname db.internal
			port 3307
			username wa
			password {env.DB_PW}
			name cluster1
		}
		refresh_interval 50ms
		retry_wait 2s
		response_timeout 7s
		max_body_size 256KiB
		token_ttl 24h
		token_cache 1s
		token_grace 1m
		token_lookup_rate 50
		api_key {env.KEY}
		login_failures 10 30m
		bcrypt_cost 12
		health_timeout 3s
		forget_after 10m
		reverse_proxy {
			transport http {
				dial_timeout 500ms
			}
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := Gateway{
		Database:        &DatabaseConfig{Hostname: "db.internal", Port: "3307", Username: "wa", Password: "{env.DB_PW}", Name: "cluster1"},
		RefreshInterval: caddy.Duration(50 * time.Millisecond), RetryWait: caddy.Duration(2 * time.Second),
		ResponseTimeout: caddy.Duration(7 * time.Second), MaxBodySize: 256 << 10, TokenTTL: caddy.Duration(24 * time.Hour), TokenCache: caddy.Duration(time.Second),
		TokenGrace: caddy.Duration(time.Minute), TokenLookupRate: 50, APIKey: "{env.KEY}", LoginFailures: 10, LoginWindow: caddy.Duration(30 * time.Minute),
		BcryptCost: 12, HealthTimeout: caddy.Duration(3 * time.Second), ForgetAfter: caddy.Duration(10 * time.Minute),
	}
	got := *g
	got.ProxyRaw = nil
	gj, _ := json.Marshal(got)
	wj, _ := json.Marshal(want)
	if string(gj) != string(wj) {
		t.Errorf("parsed\n%s\nwant\n%s", gj, wj)
	}
	var proxy map[string]any
	if err := json.Unmarshal(g.ProxyRaw, &proxy); err != nil {
		t.Fatal(err)
	}
	if proxy["handler"] != "reverse_proxy" || fmt.Sprint(proxy["dynamic_upstreams"]) != "map[source:multiconnect]" ||
		!strings.Contains(string(g.ProxyRaw), `"dial_timeout":500000000`) {
		t.Errorf("proxy %s: want reverse_proxy with the multiconnect source and the dial timeout", g.ProxyRaw)
	}

	// The bare directive is a working gateway: only the proxy is set.
	g, err = parseGateway(t, `multiconnect`)
	if err != nil || g.Database != nil || g.MaxBodySize != 0 || !strings.Contains(string(g.ProxyRaw), `"source":"multiconnect"`) {
		t.Errorf("bare directive: %+v, %v", g, err)
	}

	for _, tc := range []struct{ src, errContains string }{
		{`multiconnect localhost:6250`, "wrong argument count"},
		{`multiconnect { shards 4 }`, `unknown multiconnect setting "shards"`},
		{`multiconnect { database { host db } }`, `unknown database setting "host"`},
		{`multiconnect { database { port } }`, "wrong argument count"},
		{`multiconnect { refresh_interval soon }`, "refresh_interval"},
		{`multiconnect { retry_wait 1s 2s }`, "wrong argument count"},
		{`multiconnect { max_body_size lots }`, "max_body_size"},
		{`multiconnect { max_body_size 0 }`, "max_body_size"},
		{`multiconnect { login_failures none }`, "login_failures"},
		{`multiconnect { login_failures 0 }`, "login_failures"},
		{`multiconnect { login_failures 5 later }`, "window"},
		{`multiconnect { bcrypt_cost high }`, "bcrypt_cost"},
		{`multiconnect { reverse_proxy localhost:6250 }`, "takes no upstreams"},
		{`multiconnect { reverse_proxy { to localhost:6250 } }`, "takes no upstreams"},
	} {
		// Blocks need their braces on their own lines, as in a Caddyfile.
		src := strings.NewReplacer("{ ", "{\n", " }", "\n}").Replace(tc.src)
		if _, err := parseGateway(t, src); err == nil || !strings.Contains(err.Error(), tc.errContains) {
			t.Errorf("%s: error %v, want one mentioning %q", tc.src, err, tc.errContains)
		}
	}
}

// TestValidate checks the sentences Validate refuses bad values with.
func TestValidate(t *testing.T) {
	ok := func() *Gateway {
		return &Gateway{RefreshInterval: caddy.Duration(time.Second), MaxBodySize: 1, TokenTTL: 1, TokenCache: 1,
			LoginFailures: 1, LoginWindow: 1, HealthTimeout: 1, ForgetAfter: 1, BcryptCost: 10}
	}
	if err := ok().Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, tc := range []struct {
		mutate func(*Gateway)
		want   string
	}{
		{func(g *Gateway) { g.RefreshInterval = -1 }, "refresh_interval"},
		{func(g *Gateway) { g.MaxBodySize = -1 }, "max_body_size"},
		{func(g *Gateway) { g.TokenTTL = -1 }, "token_ttl"},
		{func(g *Gateway) { g.LoginFailures = 0 }, "login_failures"},
		{func(g *Gateway) { g.HealthTimeout = -1 }, "health_timeout"},
		{func(g *Gateway) { g.BcryptCost = 3 }, "bcrypt_cost"},
		{func(g *Gateway) { g.BcryptCost = 32 }, "bcrypt_cost"},
	} {
		g := ok()
		tc.mutate(g)
		if err := g.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate: %v, want an error about %s", err, tc.want)
		}
	}
}

// TestResponseTimeoutFillsTheTransport checks that response_timeout lands
// in the HTTP transport's response_header_timeout, keeps the transport's
// other settings, and never overrides one set explicitly.
func TestResponseTimeoutFillsTheTransport(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"handler":"reverse_proxy"}`, `"transport":{"protocol":"http","response_header_timeout":"20s"}`},
		{`{"handler":"reverse_proxy","transport":{"protocol":"http","dial_timeout":500000000}}`, `"transport":{"dial_timeout":500000000,"protocol":"http","response_header_timeout":"20s"}`},
		{`{"handler":"reverse_proxy","transport":{"protocol":"http","response_header_timeout":"3s"}}`, `"transport":{"protocol":"http","response_header_timeout":"3s"}`},
	} {
		out, err := withResponseTimeout([]byte(tc.in), 20*time.Second)
		if err != nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%s: got %s %v, want it to contain %s", tc.in, out, err, tc.want)
		}
	}
}
