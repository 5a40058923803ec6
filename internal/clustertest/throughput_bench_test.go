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
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
)

// BenchmarkMessagesThroughput drives the whole message path on this machine:
// clients -> gateway (bin/caddy with our module, bearer tokens) -> primary
// coreapps (group commit in MariaDB) -> transport plugins -> the simulated
// network, on a 4-shard cluster (1 master, 4 coreapps). It reports accepted
// messages per second (201s), messages delivered to the network per second,
// and p50/p99 accept latency, then runs the same load against plain Caddy
// (`respond`, and `reverse_proxy` to that respond) in the same run for scale.
// Load generator, databases and every process share the same cores.
//
//	go test -run '^$' -bench 'BenchmarkMessagesThroughput$' -benchtime 1x -timeout 20m ./internal/clustertest
//
// MC_BENCH_CLIENTS (default 256) and MC_BENCH_SECONDS (default 10) tune it.
func BenchmarkMessagesThroughput(b *testing.B) {
	clients := envInt("MC_BENCH_CLIENTS", 256)
	dur := time.Duration(envInt("MC_BENCH_SECONDS", 10)) * time.Second
	c := New(b, Options{Masters: 1, Coreapps: 4, Shards: 4, Heartbeat: 1, Unhealthy: 5})
	caddy := buildCaddyBin(b)
	gp := FreePort(b)
	gw := startCaddy(b, c, caddy, "gateway", gp,
		fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n}\n:%d {\n\tmulticonnect {\n\t\tbcrypt_cost 4\n\t}\n}\n", gp))
	token := gatewayLogin(b, gw)
	rp, pp := FreePort(b), FreePort(b)
	plain := startCaddy(b, c, caddy, "plain", rp,
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
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		before := len(c.NetworkMessages(""))
		start := time.Now()
		r := load(gw+"/v1/messages", token, clients, dur, body)
		window := time.Since(start)
		atEnd := len(c.NetworkMessages("")) - before
		var all time.Duration
		for {
			n := len(c.NetworkMessages("")) - before
			if n >= r.ok {
				all = time.Since(start)
				break
			}
			if time.Since(start) > window+60*time.Second {
				b.Fatalf("only %d of %d accepted messages reached the network a minute after the load", n, r.ok)
			}
			time.Sleep(20 * time.Millisecond)
		}
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
		proxy := load(proxied+"/v1/messages", "", clients, dur/2, body)

		accepted := float64(r.ok) / window.Seconds()
		delivered := float64(r.ok) / all.Seconds()
		b.ReportMetric(accepted, "accepted/s")
		b.ReportMetric(delivered, "delivered/s")
		b.ReportMetric(float64(r.p(50).Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(r.p(99).Microseconds())/1000, "p99-ms")
		b.ReportMetric(respond.rate(), "caddy-respond-req/s")
		b.ReportMetric(proxy.rate(), "caddy-proxy-req/s")
		b.Logf("\n| run (%d clients, %v) | requests/s | p50 | p99 | errors |\n|---|---|---|---|---|\n"+
			"| POST /v1/messages via gateway: accepted | %.0f | %v | %v | %d |\n"+
			"| ... delivered to the network (until the last accepted arrived: %v; %d during the window) | %.0f | | | |\n"+
			"| POST /v1/messages straight to the primary coreapps: accepted | %.0f | %v | %v | %d |\n"+
			"| plain Caddy respond | %.0f | %v | %v | %d |\n"+
			"| plain Caddy reverse_proxy to that respond | %.0f | %v | %v | %d |",
			clients, dur, accepted, r.p(50), r.p(99), r.errs,
			all.Round(time.Millisecond), atEnd, delivered,
			direct.rate(), direct.p(50), direct.p(99), direct.errs,
			respond.rate(), respond.p(50), respond.p(99), respond.errs,
			proxy.rate(), proxy.p(50), proxy.p(99), proxy.errs)
		b.ReportMetric(direct.rate(), "direct-accepted/s")
		for _, x := range []loadResult{r, direct, respond, proxy} {
			if x.errs > 0 {
				b.Logf("first error: %s", x.firstErr)
			}
		}
		// One Logf: go test keeps only the first lines of each benchmark's log.
		var lines []string
		for _, p := range c.Coreapps {
			_, m, _ := c.Internal("GET", p.Addr, "/metrics", "")
			vals := map[string]string{}
			for _, line := range strings.Split(string(m), "\n") {
				if f := strings.Fields(line); len(f) == 2 {
					vals[f[0]] = f[1]
				}
			}
			lines = append(lines, fmt.Sprintf("%s: group commits %s, rows %s, commit seconds %s", p.Name,
				vals["multiconnect_accept_batch_rows_count"], vals["multiconnect_accept_batch_rows_sum"], vals["multiconnect_accept_commit_seconds_sum"]))
		}
		b.Logf("group commit per coreapp:\n%s", strings.Join(lines, "\n"))
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
