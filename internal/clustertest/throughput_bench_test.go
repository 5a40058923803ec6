package clustertest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/pprofserve"
)

// BenchmarkMessagesThroughput drives the whole message path on this machine:
// clients -> gateway (bin/caddy with our module, bearer tokens) -> primary
// coreapps (group commit in MariaDB) -> transport plugins -> the simulated
// network, on a 4-shard cluster (1 master, 4 coreapps). It reports accepted
// messages per second (201s), messages delivered to the network per second,
// and p50/p99 accept latency, then runs the same load against plain Caddy
// (`respond`, and `reverse_proxy` to that respond) in the same run, and
// reports the gateway's rates as a ratio of reverse_proxy's. Beside the
// rates it reports what each message cost: CPU time per delivered message
// of every process role, MariaDB statements and fsyncs per message, group
// commit sizes, and the backlog (accepted minus delivered) every second.
// Load generator, databases and every process share the same cores.
//
//	go test -run '^$' -bench 'BenchmarkMessagesThroughput$' -benchtime 1x -timeout 20m ./internal/clustertest
//
// MC_BENCH_CLIENTS (default 256) and MC_BENCH_SECONDS (default 10) tune it;
// MC_BENCH_PPROF=<dir> saves CPU profiles of every Go process over the
// load window there (<role>-<pid>.pprof); MC_BENCH_SQLLOG=<file> writes
// MariaDB's general query log of the load window to that file (which
// slows the database: for counting statements, not for timing);
// MC_BENCH_WEBHOOK=1 sets a webhook (a server in this process answering
// 200) with the default webhook settings and counts, beside the rest,
// the delivered and read callbacks and what they cost.
//
// The plugins run with MC_TRANSPORT_GOMAXPROCS=1, what the README
// recommends for transport-simnet where nodes share a few cores, as all
// do here; set MC_TRANSPORT_GOMAXPROCS (0: the host's setting) to compare.
func BenchmarkMessagesThroughput(b *testing.B) {
	pluginProcs, ok := os.LookupEnv("MC_TRANSPORT_GOMAXPROCS")
	if !ok {
		pluginProcs = "1"
		b.Setenv("MC_TRANSPORT_GOMAXPROCS", pluginProcs) // the harness passes it to every node
	}
	clients := envInt("MC_BENCH_CLIENTS", 256)
	dur := time.Duration(envInt("MC_BENCH_SECONDS", 10)) * time.Second
	profDir := os.Getenv("MC_BENCH_PPROF")
	var addrDir string
	if profDir != "" {
		if err := os.MkdirAll(profDir, 0o755); err != nil {
			b.Fatal(err)
		}
		// Every daemon the harness starts from here on serves pprof and
		// says where in this directory.
		addrDir = b.TempDir()
		b.Setenv(pprofserve.EnvDir, addrDir)
	}
	c := New(b, Options{Masters: 1, Coreapps: 4, Shards: 4, Heartbeat: 1, Unhealthy: 5})
	caddy := buildCaddyBin(b)
	gp, adminPort := FreePort(b), FreePort(b)
	admin := "admin off"
	if profDir != "" {
		// Caddy's admin endpoint serves its pprof.
		admin = fmt.Sprintf("admin 127.0.0.1:%d", adminPort)
	}
	gwProc, gw := startCaddyProc(b, c, caddy, "gateway", gp,
		fmt.Sprintf("{\n\t%s\n\tpersist_config off\n}\n:%d {\n\tmulticonnect {\n\t\tbcrypt_cost 4\n\t}\n}\n", admin, gp))
	token := gatewayLogin(b, gw)
	rp, pp := FreePort(b), FreePort(b)
	plainProc, plain := startCaddyProc(b, c, caddy, "plain", rp,
		fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n}\n:%d {\n\trespond `{\"messages\":[{\"id\":\"x\"}]}` 201\n}\n:%d {\n\treverse_proxy 127.0.0.1:%d\n}\n",
			rp, pp, rp))
	proxied := fmt.Sprintf("http://127.0.0.1:%d", pp)
	tos := make([]string, 10000)
	for i := range tos {
		tos[i] = strconv.Itoa(15550000000 + i*37)
	}
	body := func(i int) string {
		return fmt.Sprintf(`{"to":"%s","type":"text","text":{"body":"benchmark message %d"}}`, tos[i%len(tos)], i)
	}
	gwRole := map[string][]int{"gateway": {gwProc.Pid()}}
	var hook *benchHook
	if os.Getenv("MC_BENCH_WEBHOOK") != "" {
		// The default webhook settings but the URL: delivered and read
		// statuses, stored in MariaDB until the webhook took them.
		hook = startBenchHook(b)
		c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q}}`, hook.url))
		// Every node reads settings at least every 200 ms: the
		// warm-up's statuses all find the webhook set.
		time.Sleep(time.Second)
	}
	// A short warm-up first: the first requests pay once for what no
	// message costs later (connections, compiling the message schema,
	// filling the database's buffer pool).
	warm := load(gw+"/v1/messages", token, clients, 2*time.Second, body)
	c.Eventually(60*time.Second, "the warm-up's messages delivered", func() error {
		if n, err := networkCount(c); err != nil || n < int64(warm.ok) {
			return fmt.Errorf("%d of %d delivered (%v)", n, warm.ok, err)
		}
		return nil
	})
	if hook != nil {
		c.Eventually(60*time.Second, "the warm-up's delivered and read callbacks at the webhook", func() error {
			if n := hook.statuses.Load(); n < 2*int64(warm.ok) {
				return fmt.Errorf("%d of %d", n, 2*warm.ok)
			}
			return nil
		})
	}
	load(proxied+"/v1/messages", "", clients, time.Second, body) // its warm-up
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		// The reference, first half.
		proxyBefore := runPlain(proxied+"/v1/messages", plainProc.Pid(), clients, dur/2, body)
		before, err := networkCount(c)
		if err != nil {
			b.Fatal(err)
		}
		meter := startCosts(b, c, gatewayPathProcs(c, gwRole))
		var hook0, hookReq0 int64
		if hook != nil {
			hook0, hookReq0 = hook.statuses.Load(), hook.requests.Load()
		}
		var acc atomic.Int64
		start := time.Now()
		sampler := startBacklogSampler(c, before, &acc, start)
		stopLog := func() {}
		if path := os.Getenv("MC_BENCH_SQLLOG"); path != "" {
			stopLog = generalLog(b, c, path)
		}
		var profiles func() string
		if profDir != "" {
			profiles = profiler{out: profDir, addrDir: addrDir, gateway: fmt.Sprintf("127.0.0.1:%d", adminPort), gatewayPid: gwProc.Pid()}.Start(dur)
		}
		r := loadCounted(func(int) string { return gw + "/v1/messages" }, token, clients, dur, body, &acc)
		window := time.Since(start)
		stopLog()
		atEnd, err := networkCount(c)
		if err != nil {
			b.Fatal(err)
		}
		atEnd -= before
		var all time.Duration
		for {
			n, err := networkCount(c)
			if err != nil {
				b.Fatal(err)
			}
			if n-before >= int64(r.ok) {
				all = time.Since(start)
				break
			}
			if time.Since(start) > window+60*time.Second {
				b.Fatalf("only %d of %d accepted messages reached the network a minute after the load", n-before, r.ok)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// With the webhook, every message's delivered and read statuses
		// must have reached it too.
		end, hookNote := all, ""
		if hook != nil {
			want := 2 * int64(r.ok)
			for hook.statuses.Load()-hook0 < want {
				if time.Since(start) > window+120*time.Second {
					b.Fatalf("only %d of %d statuses reached the webhook two minutes after the load", hook.statuses.Load()-hook0, want)
				}
				time.Sleep(20 * time.Millisecond)
			}
			end = time.Since(start)
			reqs := hook.requests.Load() - hookReq0
			b.ReportMetric(float64(want)/end.Seconds(), "callbacks/s")
			hookNote = fmt.Sprintf("webhook: %d statuses (delivered and read) in %d requests (%.1f per request) until %v after the start: %.0f callbacks/s\n",
				want, reqs, float64(want)/float64(max(reqs, 1)), end.Round(time.Millisecond), float64(want)/end.Seconds())
		}
		// CPU and database work from the first request until the last
		// accepted message reached the network (and, with the webhook,
		// its last status the webhook): everything those messages cost,
		// plus whatever the idle cluster does meanwhile.
		costs := meter.stop(b, r.ok)
		samples := sampler.Stop()
		profileNote := ""
		if profiles != nil {
			profileNote = profiles()
		}
		// The reference, second half: as long in all as the gateway's
		// load. Its CPU is the one Caddy process serving both the proxy
		// and the respond it proxies to.
		proxyAfter := runPlain(proxied+"/v1/messages", plainProc.Pid(), clients, dur/2, body)
		plainRef := proxyBefore.plus(proxyAfter)
		proxy := plainRef.res
		proxyCaddy, proxyGen := plainRef.perReq(plainRef.caddy), plainRef.perReq(plainRef.gen)

		// The same load straight to the shards' primary coreapps, as the
		// gateway would route it: what the gateway costs.
		primaries := map[int]string{}
		for s := 0; s < c.Opts.Shards; s++ {
			addr, err := c.ShardPrimary(s)
			if err != nil {
				b.Fatal(err)
			}
			primaries[s] = "http://" + addr + "/v1/messages"
		}
		direct := loadTo(func(i int) string { return primaries[c.ShardOf(tos[i%len(tos)])] }, "cluster:"+c.Secret, clients, dur/2, body)
		respond := load(plain+"/v1/messages", "", clients, dur/2, body)

		accepted := float64(r.ok) / window.Seconds()
		delivered := float64(r.ok) / all.Seconds()
		slope, maxBacklog, flat, series := backlogVerdict(samples, window, accepted)
		b.ReportMetric(accepted, "accepted/s")
		b.ReportMetric(delivered, "delivered/s")
		b.ReportMetric(float64(r.p(50).Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(r.p(99).Microseconds())/1000, "p99-ms")
		b.ReportMetric(respond.rate(), "caddy-respond-req/s")
		b.ReportMetric(proxy.rate(), "caddy-proxy-req/s")
		b.ReportMetric(accepted/proxy.rate(), "accepted/proxy")
		b.ReportMetric(delivered/proxy.rate(), "delivered/proxy")
		b.ReportMetric(direct.rate(), "direct-accepted/s")
		for _, role := range costRoles {
			b.ReportMetric(costs.perMsg(role), role+"-cpu-µs/msg")
		}
		gwTotal := costs.totalPerMsg()
		b.ReportMetric(gwTotal, "total-cpu-µs/msg")
		b.ReportMetric(proxyCaddy+proxyGen, "proxy-total-cpu-µs/req")
		// What the throughput ratio would be if both runs had the same
		// cores to themselves: the reference's CPU per request over the
		// gateway path's per message. Rates taken minutes apart on a
		// shared machine swing with its other load; CPU per message
		// much less.
		cpuRatio := (proxyCaddy + proxyGen) / gwTotal
		b.ReportMetric(cpuRatio, "cpu-ratio")
		b.ReportMetric(costs.dbPerMsg(costs.db.Statements()), "sql-stmts/msg")
		b.ReportMetric(costs.dbPerMsg(costs.db.Fsyncs()), "fsyncs/msg")
		b.ReportMetric(slope, "backlog-growth/s")
		flatWord := "flat"
		if !flat {
			flatWord = "NOT flat"
		}
		// Printed, not logged: go test cuts a benchmark's log after ten
		// lines.
		fmt.Printf("\nplugins at MC_TRANSPORT_GOMAXPROCS=%s\n| run (%d clients, %v) | requests/s | ratio to reverse_proxy | p50 | p99 | errors |\n|---|---|---|---|---|---|\n"+
			"| POST /v1/messages via gateway: accepted | %.0f | %.2f | %v | %v | %d |\n"+
			"| ... delivered to the network (until the last accepted arrived: %v; %d during the window) | %.0f | %.2f | | | |\n"+
			"| POST /v1/messages straight to the primary coreapps: accepted | %.0f | %.2f | %v | %v | %d |\n"+
			"| plain Caddy respond | %.0f | %.2f | %v | %v | %d |\n"+
			"| plain Caddy reverse_proxy to that respond (half before the gateway's load: %.0f/s, half after: %.0f/s) | %.0f | 1 | %v | %v | %d |\n\n"+
			"%s\n| plain Caddy reverse_proxy (%d requests, %v): proxy + respond process | %.0f | %.2f |\n| ... load generator | %.0f | %.2f |\n"+
			"| CPU ratio: reverse_proxy's CPU per request over the gateway path's per message | %.2f | |\n\n"+
			"%s\n%s\nbacklog (accepted - delivered) each second: %s\nbacklog %s: grew %.1f messages/s over the load (%.1f %% of the accept rate), at most %d\n%s",
			pluginProcs, clients, dur, accepted, accepted/proxy.rate(), r.p(50), r.p(99), r.errs,
			all.Round(time.Millisecond), atEnd, delivered, delivered/proxy.rate(),
			direct.rate(), direct.rate()/proxy.rate(), direct.p(50), direct.p(99), direct.errs,
			respond.rate(), respond.rate()/proxy.rate(), respond.p(50), respond.p(99), respond.errs,
			proxyBefore.res.rate(), proxyAfter.res.rate(), proxy.rate(), proxy.p(50), proxy.p(99), proxy.errs,
			costs.table("gateway path, by process"), proxy.ok, proxy.elapsed.Round(time.Millisecond), proxyCaddy, plainRef.caddy.Seconds()/proxy.elapsed.Seconds(), proxyGen, plainRef.gen.Seconds()/proxy.elapsed.Seconds(),
			cpuRatio,
			costs.dbLines(), hookNote, series, flatWord, slope, 100*slope/accepted, maxBacklog, profileNote+"\n")
		for _, x := range []loadResult{r, direct, respond, proxy} {
			if x.errs > 0 {
				b.Logf("first error: %s", x.firstErr)
			}
		}
	}
}

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil && v > 0 {
		return v
	}
	return def
}

type loadResult struct {
	ok, errs int
	lat      []time.Duration
	elapsed  time.Duration
	firstErr string
}

func (r loadResult) rate() float64 { return float64(r.ok) / r.elapsed.Seconds() }

func (r loadResult) p(q int) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[(len(r.lat)-1)*q/100].Round(10 * time.Microsecond)
}

// load runs clients closed-loop workers POSTing to url for d; only 201s
// count as done.
func load(url, token string, clients int, d time.Duration, body func(int) string) loadResult {
	return loadTo(func(int) string { return url }, token, clients, d, body)
}

// loadTo is load with a URL chosen per request.
func loadTo(url func(int) string, token string, clients int, d time.Duration, body func(int) string) loadResult {
	return loadCounted(url, token, clients, d, body, nil)
}

// loadCounted is loadTo counting 201s in done as they come, when done is
// not nil, for a sampler to read during the load.
func loadCounted(url func(int) string, token string, clients int, d time.Duration, body func(int) string, done *atomic.Int64) loadResult {
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	var res loadResult
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			ok, errs, first := 0, 0, ""
			for i := w; ctx.Err() == nil; i += clients {
				req, _ := http.NewRequest("POST", url(i), strings.NewReader(body(i)))
				req.Header.Set("Content-Type", "application/json")
				switch {
				case strings.HasPrefix(token, "cluster:"):
					req.Header.Set(cluster.SecretHeader, strings.TrimPrefix(token, "cluster:"))
				case token != "":
					req.Header.Set("Authorization", "Bearer "+token)
				}
				t0 := time.Now()
				resp, err := hc.Do(req)
				if err != nil {
					errs++
					if first == "" {
						first = err.Error()
					}
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 201 {
					errs++
					if first == "" {
						first = fmt.Sprintf("HTTP %d %s", resp.StatusCode, b)
					}
					continue
				}
				ok++
				lat = append(lat, time.Since(t0))
				if done != nil {
					done.Add(1)
				}
			}
			mu.Lock()
			res.ok += ok
			res.errs += errs
			res.lat = append(res.lat, lat...)
			if res.firstErr == "" {
				res.firstErr = first
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	sort.Slice(res.lat, func(i, j int) bool { return res.lat[i] < res.lat[j] })
	return res
}

func buildCaddyBin(b testing.TB) string {
	dir := b.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./caddymodule/cmd/caddy")
	cmd.Dir = RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build caddy: %v\n%s", err, out)
	}
	return filepath.Join(dir, "caddy")
}

// startCaddy runs bin/caddy with the Caddyfile conf and returns the URL of
// port, once it answers.
func startCaddy(b testing.TB, c *Cluster, bin, name string, port int, conf string) string {
	_, u := startCaddyProc(b, c, bin, name, port, conf)
	return u
}

// startCaddyProc is startCaddy returning the process too.
func startCaddyProc(b testing.TB, c *Cluster, bin, name string, port int, conf string) (*Proc, string) {
	path := filepath.Join(c.Dir, name+".Caddyfile")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	p := Start(b, c.Dir, name, bin, append(c.DB.Env(), "MC_DB_NAME="+DBName, "XDG_DATA_HOME="+c.Dir, "XDG_CONFIG_HOME="+c.Dir),
		"run", "--config", path, "--adapter", "caddyfile")
	u := fmt.Sprintf("http://127.0.0.1:%d", port)
	p.Addr = u
	c.Eventually(20*time.Second, name+" answers", func() error {
		resp, err := http.Get(u + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return p, u
}

// gatewayLogin does the first admin login (which must set a new password)
// and returns a bearer token.
func gatewayLogin(b testing.TB, gw string) string {
	var token string
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest("POST", gw+"/v1/users/login", strings.NewReader(`{"new_password":"Bench-Passw0rd!"}`))
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("admin:secret")))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var doc struct {
			Users []struct {
				Token string `json:"token"`
			} `json:"users"`
		}
		if err := json.Unmarshal(raw, &doc); err == nil && len(doc.Users) == 1 && doc.Users[0].Token != "" {
			token = doc.Users[0].Token
			break
		}
		// 503 while the gateway connects to MySQL and loads the shard map.
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			b.Fatalf("login: HTTP %d %s", resp.StatusCode, raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return token
}
