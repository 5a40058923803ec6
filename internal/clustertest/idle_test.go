package clustertest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// idleCaddy is bin/caddy built once for every idle measurement of a run.
var (
	idleCaddyOnce sync.Once
	idleCaddy     string
)

// idleResult is what one idle window measured.
type idleResult struct {
	nodes      int
	window     time.Duration
	statements int64
	top        string
	sources    string // statement texts by count (general log), when asked for
}

func (r idleResult) perSecond() float64 { return float64(r.statements) / r.window.Seconds() }
func (r idleResult) perNode() float64   { return r.perSecond() / float64(r.nodes) }

// measureIdle starts a cluster of masters, coreapps and one gateway
// (bin/caddy with the module) with shards shards at heartbeat/unhealthy
// seconds, lets it settle, and counts the SQL statements MariaDB received
// over window while nobody sends anything. With generalLog, MariaDB's
// general log is on during the window and its statements are listed by
// text, largest first, to say which loop sent them (it costs statements of
// its own only on the server side: Questions counts client statements).
// With cloud, the masters and coreapps run transport-cloudapi against the
// Graph API test server and the gateway serves /cloudapi/webhook, as a
// Cloud API deployment does.
func measureIdle(t testing.TB, shards, masters, coreapps int, hb, unhealthy float64, keepalive, window time.Duration, generalLog, cloud bool) idleResult {
	t.Helper()
	// The nodes' own defaults too (the harness shortens them for other
	// tests): MC_MASTER_LEASE 10 s, MC_LIVENESS_INTERVAL 60 s.
	production := []string{"MC_LIVENESS_INTERVAL=60s"}
	gp := FreePort(t)
	o := Options{Masters: masters, Coreapps: coreapps, Shards: shards, Heartbeat: hb, Unhealthy: unhealthy, Keepalive: keepalive,
		MasterLease: 10 * time.Second, MasterEnv: production,
		CoreappEnv: func(*Cluster, int) []string { return production }}
	gwConf := ""
	if cloud {
		o.CloudAPI = true
		o.GraphArgs = []string{"-webhook-url", fmt.Sprintf("http://127.0.0.1:%d/cloudapi/webhook", gp)}
		gwConf = fmt.Sprintf(" {\n\t\tcloudapi_app_secret %s\n\t\tcloudapi_verify_token %s\n\t\tcloudapi_phone_number_id %s\n\t}",
			CloudAppSecret, CloudVerifyToken, CloudPhoneID)
	}
	c := New(t, o)
	idleCaddyOnce.Do(func() {
		// Out of the first test's TempDir, which goes with it: every
		// sub-benchmark runs this binary.
		dir, err := os.MkdirTemp("", "mc-idle-caddy-")
		if err != nil {
			t.Fatal(err)
		}
		idleCaddy = filepath.Join(dir, "caddy")
		if err := os.Rename(buildCaddyBin(t), idleCaddy); err != nil {
			t.Fatal(err)
		}
	})
	caddy := idleCaddy
	startCaddy(t, c, caddy, "gateway", gp,
		fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n}\n:%d {\n\tmulticonnect%s\n}\n", gp, gwConf))
	// Settle: the claims, the first heartbeats, the gateway's first loads.
	c.WaitAllShardsConnected(30 * time.Second)
	time.Sleep(max(3*time.Second, time.Duration(2*hb*float64(time.Second))))
	if generalLog {
		for _, q := range []string{`SET GLOBAL log_output = 'TABLE'`, `TRUNCATE mysql.general_log`, `SET GLOBAL general_log = 1`} {
			if _, err := c.SQL.Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	before, err := c.DBStatus()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	time.Sleep(window)
	after, err := c.DBStatus()
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	d := after.Since(before)
	r := idleResult{nodes: masters + coreapps + 1, window: elapsed, statements: d.Statements(), top: d.TopCommands(8)}
	if generalLog {
		if _, err := c.SQL.Exec(`SET GLOBAL general_log = 0`); err != nil {
			t.Fatal(err)
		}
		r.sources = generalLogSummary(t, c)
	}
	return r
}

// literal masks the constants of a statement so statements of one loop
// group together.
var literal = regexp.MustCompile(`'[^']*'|\b\d+(\.\d+)?\b`)

// generalLogSummary groups the general log's client statements by their
// text with constants masked, largest first.
func generalLogSummary(t testing.TB, c *Cluster) string {
	rows, err := c.SQL.Query(`SELECT command_type, CONVERT(argument USING utf8mb4) FROM mysql.general_log
		WHERE command_type IN ('Query', 'Execute')`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	count := map[string]int{}
	for rows.Next() {
		var kind, arg string
		if err := rows.Scan(&kind, &arg); err != nil {
			t.Fatal(err)
		}
		arg = strings.Join(strings.Fields(literal.ReplaceAllString(arg, "?")), " ")
		if len(arg) > 110 {
			arg = arg[:110]
		}
		count[arg]++
	}
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range count {
		all = append(all, kv{k, v})
	}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			if all[j].v > all[i].v {
				all[i], all[j] = all[j], all[i]
			}
		}
	}
	var b strings.Builder
	for i, e := range all {
		if i == 25 {
			break
		}
		fmt.Fprintf(&b, "%6d  %s\n", e.v, e.k)
	}
	return b.String()
}

// TestIdleStatements: an idle cluster at the default settings (heartbeat
// 5 s, unhealthy 30 s, the network's keepalive 1 s as in production) of two
// masters, four coreapps, one gateway and four shards sends MariaDB at most
// one statement per node per second.
func TestIdleStatements(t *testing.T) { checkIdle(t, false) }

// TestIdleStatementsCloudAPI is TestIdleStatements for the Cloud API
// deployment: masters and coreapps on transport-cloudapi against the Graph
// API test server, the gateway with its /cloudapi/webhook route.
func TestIdleStatementsCloudAPI(t *testing.T) { checkIdle(t, true) }

func checkIdle(t *testing.T, cloud bool) {
	// The general log is always on here: it costs the nodes nothing (only
	// client statements are counted), and a failure then says which loop
	// sent the statements.
	r := measureIdle(t, 4, 2, 4, 5, 30, time.Second, 12*time.Second, true, cloud)
	t.Logf("idle, 4 shards, %d nodes, defaults, cloud API %v: %d statements in %v = %.1f/s, %.2f per node per second (%s)",
		r.nodes, cloud, r.statements, r.window.Round(time.Millisecond), r.perSecond(), r.perNode(), r.top)
	if r.perNode() > 1 {
		t.Errorf("idle: %.2f statements per node per second, want <= 1; by statement:\n%s", r.perNode(), r.sources)
	} else if testing.Verbose() {
		t.Logf("by statement:\n%s", r.sources)
	}
}

// BenchmarkIdleStatements prints the idle statement rate for 4, 16 and 32
// shards (MC_IDLE_SHARDS, comma-separated) at the default settings and
// the fast ones (heartbeat 0.25/unhealthy 1 and 0.05/0.25, keepalive to
// match), with two masters, one coreapp per shard (a coreapp holds one
// shard) and one gateway. MC_IDLE_SECONDS (default 20) is the window;
// MC_IDLE_TRANSPORT=cloudapi runs the Cloud API deployment.
//
//	go test -run '^$' -bench 'BenchmarkIdleStatements$' -benchtime 1x -timeout 30m ./internal/clustertest
func BenchmarkIdleStatements(b *testing.B) {
	cloud := os.Getenv("MC_IDLE_TRANSPORT") == "cloudapi"
	shardCounts := []int{4, 16, 32}
	if s := os.Getenv("MC_IDLE_SHARDS"); s != "" {
		shardCounts = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("MC_IDLE_SHARDS: %v", err)
			}
			shardCounts = append(shardCounts, n)
		}
	}
	window := time.Duration(envInt("MC_IDLE_SECONDS", 20)) * time.Second
	settings := []struct {
		name          string
		hb, unhealthy float64
		keepalive     time.Duration
	}{
		{"default 5/30", 5, 30, time.Second},
		{"fast 0.25/1", 0.25, 1, 250 * time.Millisecond},
		{"fast 0.05/0.25", 0.05, 0.25, 100 * time.Millisecond},
	}
	for _, shards := range shardCounts {
		for _, s := range settings {
			b.Run(fmt.Sprintf("shards=%d/%s", shards, strings.ReplaceAll(s.name, " ", "_")), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					r := measureIdle(b, shards, 2, shards, s.hb, s.unhealthy, s.keepalive, window, os.Getenv("MC_IDLE_GENERAL_LOG") != "", cloud)
					b.Logf("idle | %d shards | %s | %d nodes | %.1f statements/s | %.2f per node/s | %s",
						shards, s.name, r.nodes, r.perSecond(), r.perNode(), r.top)
					if r.sources != "" {
						b.Logf("by statement:\n%s", r.sources)
					}
					b.ReportMetric(r.perNode(), "stmts/node/s")
				}
			})
		}
	}
}

// TestNewPrimarySendsBacklogAtOnce: messages a primary accepted but could
// not send (its plugin frozen) are sent by the next primary as soon as it
// connects, not at the outbox's slow safety poll (10 s): connecting wakes
// the outbox (README, "Idle cost").
func TestNewPrimarySendsBacklogAtOnce(t *testing.T) {
	c := New(t, Options{Coreapps: 2})
	first := c.WaitConnected(0, "", 10*time.Second)
	_, plugin := freezePrimaryPlugin(t, c, 0)
	want := map[string]bool{}
	for i := 0; i < 20; i++ {
		to := strconv.Itoa(15551230000 + i)
		st, id, body, err := c.PostMessageTo(context.Background(), first.Node,
			fmt.Sprintf(`{"to":%q,"type":"text","text":{"body":"backlog %d"}}`, to, i), "")
		if err != nil || st != 201 {
			t.Fatalf("message %d: HTTP %d %s %v", i, st, body, err)
		}
		want[id] = true
	}
	time.Sleep(300 * time.Millisecond)
	if got := len(c.NetworkMessages("")); got != 0 {
		t.Fatalf("the network has %d messages with the primary's plugin frozen", got)
	}
	syscall.Kill(plugin, syscall.SIGKILL)
	c.CoreappByAddr(first.Node).Kill()
	next := c.WaitConnected(0, first.Node, 15*time.Second)
	for {
		n := 0
		for _, m := range c.NetworkMessages("") {
			if want[m.ID] {
				n++
			}
		}
		since := time.Since(time.Unix(0, next.Start))
		if n == len(want) {
			t.Logf("the new primary %s sent the %d messages left behind %v after connecting", next.Node, n, since.Round(time.Millisecond))
			if since > time.Second {
				t.Errorf("the backlog reached the network %v after the new primary connected, want it at once (< 1 s, the safety poll is 10 s)", since)
			}
			break
		}
		if since > 10*time.Second {
			t.Fatalf("only %d of %d left-behind messages reached the network 10 s after the new primary connected", n, len(want))
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.RequireNoViolations()
}
