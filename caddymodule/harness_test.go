package caddymodule

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/changes"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/freeport"
	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/schema"
	"github.com/multiconnect/multiconnect/internal/shard"
)

// The tests run the gateway as users do: the real Caddy binary built from
// caddymodule/cmd/caddy, configured by a Caddyfile, against a private
// MariaDB holding the real schema, with small HTTP servers standing in for
// coreapps and masters (they follow the node contract: the cluster secret,
// /internal/health, 1018/1017 when not primary).

const testDB = "multiconnect"

var (
	buildOnce sync.Once
	caddyBin  string
	buildErr  error
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), ".."))
}

// buildCaddy builds bin/caddy once per test process (a few seconds with a
// warm build cache, about 90 s cold).
func buildCaddy(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mc-caddy-bin-")
		if err != nil {
			buildErr = err
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("the gateway tests build bin/caddy with the go command: %w", err)
			return
		}
		cmd := exec.Command(goBin, "build", "-o", dir+"/", "./caddymodule/cmd/caddy")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./caddymodule/cmd/caddy: %v\n%s", err, out)
			return
		}
		caddyBin = filepath.Join(dir, "caddy")
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return caddyBin
}

func freePort(t testing.TB) int {
	t.Helper()
	p, err := freeport.Pick("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// testCluster is a MariaDB with the cluster schema and the stub nodes.
type testCluster struct {
	t      testing.TB
	srv    *mariadbtest.Server
	db     *sql.DB
	secret string
	shards atomic.Int64 // read by the stub nodes while they serve
	nodes  []*stubNode
	// realMasters: real bin/master processes push every change to the
	// gateway (package changes). Stub nodes and the SQL these tests write
	// push nothing, so without real masters the gateway polls the shard
	// map every 100 ms, as it did before pushes (its default is a 10 s
	// safety net).
	realMasters bool
}

func newTestCluster(t testing.TB, shards int) *testCluster {
	t.Helper()
	srv := mariadbtest.Start(t)
	db := srv.Open(testDB)
	ctx := context.Background()
	if err := schema.Bootstrap(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := schema.Upgrade(ctx, db, func(context.Context) error { return nil }, nil); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Init(ctx, db, shards); err != nil {
		t.Fatal(err)
	}
	secret, err := cluster.Secret(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, srv: srv, db: db, secret: secret}
	c.shards.Store(int64(shards))
	return c
}

func (c *testCluster) exec(q string, args ...any) {
	c.t.Helper()
	if _, err := c.db.Exec(q, args...); err != nil {
		c.t.Fatalf("%s: %v", q, err)
	}
}

// assign makes node the primary of shard at epoch, as a master's promotion
// does: the shard_map row and a map_version bump in one transaction.
func (c *testCluster) assign(s int, node *stubNode, epoch int64) time.Time {
	c.t.Helper()
	tx, err := c.db.Begin()
	if err != nil {
		c.t.Fatal(err)
	}
	defer tx.Rollback()
	id := ""
	if node != nil {
		id = node.addr
	}
	if _, err := tx.Exec(`INSERT INTO shard_map (shard_id, node_id, incarnation, epoch, lease_expires, connect_after, assigned_at, master_epoch)
		VALUES (?, NULLIF(?, ''), 1, ?, NOW(6) + INTERVAL 1 HOUR, NOW(6), NOW(6), 1)
		ON DUPLICATE KEY UPDATE node_id = VALUES(node_id), epoch = VALUES(epoch), assigned_at = NOW(6)`, s, id, epoch); err != nil {
		c.t.Fatal(err)
	}
	if err := cluster.BumpMap(context.Background(), tx); err != nil {
		c.t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		c.t.Fatal(err)
	}
	return time.Now()
}

// addPrimaries starts one connected stub coreapp per shard and makes it the
// shard's primary at epoch 1.
func (c *testCluster) addPrimaries(shards int) []*stubNode {
	var out []*stubNode
	for s := 0; s < shards; s++ {
		n := c.addNode("coreapp")
		n.shard.Store(int64(s))
		n.connected.Store(true)
		c.assign(s, n, 1)
		out = append(out, n)
	}
	return out
}

// setPrimaryMaster gives the master lease to node.
func (c *testCluster) setPrimaryMaster(node *stubNode) {
	c.t.Helper()
	c.exec(`UPDATE master_lease SET holder = ?, holder_addr = ?, epoch = epoch + 1, expires_at = NOW(6) + INTERVAL 1 HOUR, acquired_at = NOW(6) WHERE id = 1`,
		node.addr, node.addr)
}

// stubNode is a coreapp or master following the node contract.
type stubNode struct {
	t         testing.TB
	c         *testCluster
	addr      string
	role      string // "coreapp" or "master"
	container string
	shard     atomic.Int64 // coreapp: the shard it is primary of, -1 for none
	primary   atomic.Bool  // master: holds the lease
	connected atomic.Bool
	ln        net.Listener
	srv       *http.Server

	mu       sync.Mutex
	received []stubRequest
	refused  atomic.Int64 // requests answered 1017/1018
	// hub answers the gateway's change feed as a primary master's does
	// (it never notifies: these tests change the map in SQL, and the
	// gateway polls it), so the feed's long poll is not counted among the
	// requests the tests check.
	hub *changes.Hub
}

type stubRequest struct {
	at        time.Time
	method    string
	path      string
	rawPath   string // the path as it came on the wire, escapes kept
	to        string
	auth      string // the Authorization header that reached the node
	secretsOK bool
}

// addNode starts a stub and registers it in the nodes table.
func (c *testCluster) addNode(role string) *stubNode {
	c.t.Helper()
	return c.addNodeWith(role, nil)
}

// addNodeWith is addNode with the stub's server changed by tune before it
// serves (tune may wrap its Handler, the stub, or watch its connections).
func (c *testCluster) addNodeWith(role string, tune func(*http.Server)) *stubNode {
	c.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	n := &stubNode{t: c.t, c: c, addr: ln.Addr().String(), role: role, ln: ln, hub: changes.NewHub()}
	n.container = fmt.Sprintf("ctr%d", len(c.nodes)+1)
	n.shard.Store(-1)
	n.srv = &http.Server{Handler: n}
	if tune != nil {
		tune(n.srv)
	}
	go n.srv.Serve(ln)
	c.t.Cleanup(func() { n.srv.Close() })
	c.exec(`INSERT INTO nodes (id, role, hostname, container, incarnation, started_at, last_seen) VALUES (?, ?, 'host', ?, 1, NOW(6), NOW(6))`,
		n.addr, role, n.container)
	c.nodes = append(c.nodes, n)
	return n
}

// kill closes the node's listener and connections: later dials are refused.
func (n *stubNode) kill() { n.srv.Close() }

func (n *stubNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	secretOK := r.Header.Get(cluster.SecretHeader) == n.c.secret && len(r.Header.Values(cluster.SecretHeader)) == 1
	if !secretOK {
		apierror.Write(w, apierror.AccessDenied, "internal port: cluster members only")
		return
	}
	if r.URL.Path == changes.Route && n.role == "master" && n.primary.Load() {
		n.hub.ServeHTTP(w, r)
		return
	}
	if r.URL.Path == "/internal/health" {
		doc := map[string]any{"node": n.addr, "hostname": "host", "container": n.container}
		if n.role == "master" {
			doc["role"] = "secondary_master"
			if n.primary.Load() {
				doc["role"] = "primary_master"
			}
		} else {
			s := n.shard.Load()
			doc["role"], doc["primary"], doc["shard"], doc["connected"], doc["epoch"] = "coreapp", s >= 0, s, n.connected.Load(), 1
		}
		json.NewEncoder(w).Encode(doc)
		return
	}
	body, _ := io.ReadAll(r.Body)
	req := stubRequest{at: time.Now(), method: r.Method, path: r.URL.Path, rawPath: r.URL.EscapedPath(), auth: r.Header.Get("Authorization"), secretsOK: secretOK}
	if n.role == "master" {
		if !n.primary.Load() {
			n.refused.Add(1)
			apierror.Write(w, apierror.NotPrimaryMaster, "this master does not hold the master lease")
			return
		}
		n.record(req)
		writeJSON(w, http.StatusOK, []byte(`{"node":"`+n.addr+`"}`))
		return
	}
	own := n.shard.Load()
	if r.URL.Path == "/v1/messages" {
		var m struct {
			To string `json:"to"`
		}
		json.Unmarshal(body, &m)
		req.to = m.To
		s, err := shard.For(m.To, int(n.c.shards.Load()))
		if err != nil || int64(s) != own {
			n.refused.Add(1)
			apierror.Write(w, apierror.NotPrimaryCoreapp, "not the primary of this recipient's shard")
			return
		}
		n.record(req)
		writeJSON(w, http.StatusCreated, []byte(`{"messages":[{"id":"`+n.addr+`"}]}`))
		return
	}
	if own < 0 {
		n.refused.Add(1)
		apierror.Write(w, apierror.NotPrimaryCoreapp, "not a primary coreapp")
		return
	}
	n.record(req)
	writeJSON(w, http.StatusOK, []byte(`{"node":"`+n.addr+`","body_bytes":`+strconv.Itoa(len(body))+`}`))
}

func (n *stubNode) record(r stubRequest) {
	n.mu.Lock()
	n.received = append(n.received, r)
	n.mu.Unlock()
}

func (n *stubNode) requests() []stubRequest {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]stubRequest(nil), n.received...)
}

// gateway is a running bin/caddy.
type gateway struct {
	t    testing.TB
	url  string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	http *http.Client
}

// testAPIKey is the WA_API_KEY every test gateway gets.
const testAPIKey = "test-api-key-0123456789"

// startGateway runs bin/caddy with the multiconnect directive (plus extra
// settings) on a free port, with the database taken from db.env variables
// and WA_API_KEY set to testAPIKey.
func (c *testCluster) startGateway(extra string) *gateway {
	c.t.Helper()
	return c.startGatewayEnv(extra, []string{"WA_API_KEY=" + testAPIKey}, map[string]string{"Authorization": "Apikey " + testAPIKey})
}

// startGatewayEnv is startGateway with extra environment variables; ready
// is the Authorization the readiness probe (GET /metrics) sends.
func (c *testCluster) startGatewayEnv(extra string, env []string, ready map[string]string) *gateway {
	c.t.Helper()
	dir := c.t.TempDir()
	port := freePort(c.t)
	caddyfile := fmt.Sprintf(`{
	admin off
	persist_config off
}
:%d {
	log {
		output stderr
	}
	multiconnect {
		bcrypt_cost 4
		%s
		%s
	}
}
`, port, c.pollWithoutPush(), extra)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return c.runCaddy(port, env, ready, "run", "--config", path, "--adapter", "caddyfile")
}

// pollWithoutPush is the refresh_interval line when no real master pushes
// changes (see realMasters).
func (c *testCluster) pollWithoutPush() string {
	if c.realMasters {
		return ""
	}
	return "refresh_interval 100ms"
}

// runCaddy starts bin/caddy with args and the cluster's db.env (plus env),
// expecting the API on port, and waits until it is ready.
func (c *testCluster) runCaddy(port int, env []string, ready map[string]string, args ...string) *gateway {
	c.t.Helper()
	g := c.launchCaddy(fmt.Sprintf("http://127.0.0.1:%d", port), &http.Transport{MaxIdleConnsPerHost: 64}, env, args...)
	g.waitReady(ready)
	return g
}

// launchCaddy starts bin/caddy with args and the cluster's db.env (plus
// env); requests go to url through tr. It does not wait for readiness.
func (c *testCluster) launchCaddy(url string, tr *http.Transport, env []string, args ...string) *gateway {
	c.t.Helper()
	bin := buildCaddy(c.t)
	dir := c.t.TempDir()
	logPath := filepath.Join(dir, "caddy.log")
	f, err := os.Create(logPath)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(c.srv.Env(), "MC_DB_NAME="+testDB, "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir,
		"PATH="+os.Getenv("PATH"))
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	g := &gateway{t: c.t, url: url, cmd: cmd, log: logPath, done: make(chan struct{}),
		http: &http.Client{Timeout: 10 * time.Second, Transport: tr}}
	go func() { cmd.Wait(); f.Close(); close(g.done) }()
	c.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-g.done
		if c.t.Failed() {
			b, _ := os.ReadFile(logPath)
			c.t.Logf("caddy log (tail):\n%s", tailString(string(b), 6000))
		}
	})
	return g
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitReady waits until the gateway has loaded the shard map, which its
// own metrics tell.
func (g *gateway) waitReady(auth map[string]string) {
	g.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-g.done:
			b, _ := os.ReadFile(g.log)
			g.t.Fatalf("caddy exited while starting:\n%s", b)
		default:
		}
		st, body := g.do("GET", "/metrics?format=prometheus", "", auth)
		if st == 200 && strings.Contains(body, "multiconnect_gateway_shard_map_age_seconds") &&
			!strings.Contains(body, "multiconnect_gateway_shard_map_age_seconds -1") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.t.Fatal("gateway not ready within 20s")
}

// do sends a request and returns the status and body (0 on a transport error).
func (g *gateway) do(method, path, body string, headers map[string]string) (int, string) {
	req, err := http.NewRequest(method, g.url+path, strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := g.http.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func basic(user, pass string) map[string]string {
	return map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}
}

func bearer(token string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + token}
}

// adminPassword is what the tests change admin/secret to.
const adminPassword = "Adm1n-Passw0rd!"

// loginAdmin does the first login (setting adminPassword) or a later one.
func (g *gateway) loginAdmin() string {
	g.t.Helper()
	st, body := g.do("POST", "/v1/users/login", `{"new_password":"`+adminPassword+`"}`, basic("admin", "secret"))
	if st != 200 {
		st, body = g.do("POST", "/v1/users/login", "", basic("admin", adminPassword))
	}
	if st != 200 {
		g.t.Fatalf("admin login: HTTP %d: %s", st, body)
	}
	return tokenOf(g.t, body)
}

func tokenOf(t testing.TB, body string) string {
	t.Helper()
	var doc struct {
		Users []struct {
			Token        string `json:"token"`
			ExpiresAfter string `json:"expires_after"`
		} `json:"users"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil || len(doc.Users) != 1 || doc.Users[0].Token == "" {
		t.Fatalf("login answer has no token: %s", body)
	}
	return doc.Users[0].Token
}

// errCode is the first error code of an error document, or 0.
func errCode(body string) int {
	var doc apierror.Body
	if json.Unmarshal([]byte(body), &doc) != nil || len(doc.Errors) == 0 {
		return 0
	}
	return doc.Errors[0].Code
}

// recipientFor returns a recipient that hashes to shard s among shards.
func recipientFor(t testing.TB, s, shards, seed int) string {
	t.Helper()
	for i := seed * 1000; ; i++ {
		to := "1555" + strconv.Itoa(1000000+i)
		if got, _ := shard.For(to, shards); got == s {
			return to
		}
	}
}

func messageBody(to string) string {
	var b bytes.Buffer
	json.NewEncoder(&b).Encode(map[string]any{"to": to, "type": "text", "text": map[string]string{"body": "hello"}})
	return b.String()
}

// newChunkedRequest makes a POST whose body has no declared length.
func newChunkedRequest(url string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequest("POST", url, io.NopCloser(body))
	if err != nil {
		return nil, err
	}
	req.ContentLength = -1
	return req, nil
}
