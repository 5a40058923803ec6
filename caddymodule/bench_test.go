//go:build gatewaybench

package caddymodule

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/measure"
)

// TestThroughputVsPlainCaddy measures POST /v1/messages through the gateway
// against Caddy's plain reverse_proxy to the same trivial upstream (a third
// Caddy answering 201 with `respond`), with wrk on loopback, alternating
// the two so both see the same machine load. It needs wrk
// (apt-get install -y wrk) and is kept out of plain `go test` by its build
// tag; run it with
//
//	go test -tags gatewaybench -count=1 -run TestThroughputVsPlainCaddy -v ./caddymodule/
//
// MC_BENCH_DURATION (default 5s), MC_BENCH_ROUNDS (default 6) and
// MC_BENCH_CONNECTIONS (default 32) tune the run; MC_BENCH_PPROF=<file>
// saves an 8 s CPU profile of the gateway taken during the first round.
//
// The throughput ratio is reported, not asserted: on a shared two-core
// machine single rounds swing between 0.8 and 1.2. What is asserted is that
// every answer was a 2xx and that the gateway's CPU time per request, which
// other load disturbs far less, stays within 25 % of plain Caddy's.
func TestThroughputVsPlainCaddy(t *testing.T) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		t.Fatal("wrk not found: apt-get install -y wrk")
	}
	duration := envOr("MC_BENCH_DURATION", "5s")
	rounds, _ := strconv.Atoi(envOr("MC_BENCH_ROUNDS", "6"))
	conns := envOr("MC_BENCH_CONNECTIONS", "32")

	c := newTestCluster(t, 1)
	upstreamPort := freePort(t)
	upstream := c.runPlainCaddy(upstreamPort, fmt.Sprintf(`:%d {
	respond `+"`"+`{"messages":[{"id":"gBEGkYiEB1VXAglK1ZEqA1YKPrU"}]}`+"`"+` 201
}`, upstreamPort))
	plainPort := freePort(t)
	plain := c.runPlainCaddy(plainPort, fmt.Sprintf(`:%d {
	reverse_proxy 127.0.0.1:%d
}`, plainPort, upstreamPort))
	_ = upstream

	// The shard map names the upstream as shard 0's primary.
	node := &stubNode{addr: fmt.Sprintf("127.0.0.1:%d", upstreamPort)}
	c.exec(`INSERT INTO nodes (id, role, hostname, container, incarnation, started_at, last_seen) VALUES (?, 'coreapp', 'host', 'bench', 1, NOW(6), NOW(6))`, node.addr)
	c.assign(0, node, 1)
	// The gateway as users run it, minus the access log (plain Caddy has
	// none either); with MC_BENCH_PPROF=<file> its admin endpoint is on so
	// a CPU profile of the first round can be taken.
	gwPort, adminPort := freePort(t), freePort(t)
	admin := "admin off"
	if os.Getenv("MC_BENCH_PPROF") != "" {
		admin = fmt.Sprintf("admin 127.0.0.1:%d", adminPort)
	}
	cfgPath := filepath.Join(t.TempDir(), "Caddyfile")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("{\n\t%s\n\tpersist_config off\n}\n:%d {\n\tmulticonnect\n}\n", admin, gwPort)), 0o600)
	g := c.runCaddy(gwPort, []string{"WA_API_KEY=" + testAPIKey}, map[string]string{"Authorization": "Apikey " + testAPIKey},
		"run", "--config", cfgPath, "--adapter", "caddyfile")
	token := g.loginAdmin()
	if st, body := g.do("POST", "/v1/messages", messageBody("15551234567"), bearer(token)); st != 201 {
		t.Fatalf("gateway to the upstream: HTTP %d %s", st, body)
	}

	script := filepath.Join(t.TempDir(), "post.lua")
	lua := fmt.Sprintf(`wrk.method = "POST"
wrk.body = %q
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
`, strings.TrimSpace(messageBody("15551234567")), token)
	if err := os.WriteFile(script, []byte(lua), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(url string, pid int) wrkResult {
		cpu0 := procCPU(t, pid)
		cmd := exec.Command(wrk, "-t2", "-c"+conns, "-d"+duration, "--latency", "-s", script, url+"/v1/messages")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("wrk: %v\n%s", err, out)
		}
		r, err := parseWrk(string(out))
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		r.cpu = procCPU(t, pid) - cpu0
		return r
	}
	plainURL := fmt.Sprintf("http://127.0.0.1:%d", plainPort)
	// Warm both up (connections, caches, the JIT-free but page-cold binaries).
	exec.Command(wrk, "-t2", "-c"+conns, "-d2s", "-s", script, plainURL+"/v1/messages").Run()
	exec.Command(wrk, "-t2", "-c"+conns, "-d2s", "-s", script, g.url+"/v1/messages").Run()

	var ours, theirs []wrkResult
	for i := 0; i < rounds; i++ {
		p := run(plainURL, plain.cmd.Process.Pid)
		var prof chan []byte
		if f := os.Getenv("MC_BENCH_PPROF"); f != "" && i == 0 {
			prof = make(chan []byte, 1)
			go func() {
				resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=8", adminPort))
				if err != nil {
					prof <- nil
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				prof <- b
			}()
		}
		o := run(g.url, g.cmd.Process.Pid)
		if prof != nil {
			os.WriteFile(os.Getenv("MC_BENCH_PPROF"), <-prof, 0o644)
		}
		theirs, ours = append(theirs, p), append(ours, o)
		t.Logf("round %d: plain reverse_proxy %.0f req/s (p50 %s, p99 %s, %.0f µs CPU/req); gateway %.0f req/s (p50 %s, p99 %s, %.0f µs CPU/req); ratio %.3f",
			i+1, p.rps, p.p50, p.p99, p.cpuPerReq(), o.rps, o.p50, o.p99, o.cpuPerReq(), o.rps/p.rps)
		if o.non2xx != 0 || p.non2xx != 0 {
			t.Errorf("round %d: non-2xx answers (gateway %d, plain %d)", i+1, o.non2xx, p.non2xx)
		}
	}
	o, p := sum(ours), sum(theirs)
	if o.cpuPerReq() > 1.25*p.cpuPerReq() {
		t.Errorf("the gateway used %.0f µs of CPU per request, more than 1.25 times plain Caddy's %.0f", o.cpuPerReq(), p.cpuPerReq())
	}
	t.Logf("RESULT wrk -t2 -c%s -d%s x%d, POST /v1/messages: gateway %.0f req/s, median p50 %s p99 %s, %.0f µs CPU/req | plain Caddy reverse_proxy %.0f req/s, median p50 %s p99 %s, %.0f µs CPU/req | throughput ratio %.3f, CPU/req ratio %.3f",
		conns, duration, rounds, o.rps, o.p50, o.p99, o.cpuPerReq(), p.rps, p.p50, p.p99, p.cpuPerReq(), o.rps/p.rps, o.cpuPerReq()/p.cpuPerReq())
}

type wrkResult struct {
	rps      float64
	requests int
	p50, p99 time.Duration
	non2xx   int
	cpu      time.Duration // CPU the proxy process used during the run
}

// cpuPerReq is the proxy's CPU time per request in µs: a measure of its
// own cost that other load on the machine disturbs less than throughput.
func (r wrkResult) cpuPerReq() float64 {
	if r.requests == 0 {
		return 0
	}
	return float64(r.cpu.Microseconds()) / float64(r.requests)
}

// procCPU is the CPU time pid has used.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	d, err := measure.ProcessCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var (
	rpsRE      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	requestsRE = regexp.MustCompile(`\n\s*([0-9]+) requests in`)
	p50RE      = regexp.MustCompile(`\n\s+50%\s+([0-9.]+)(us|ms|s)`)
	p99RE      = regexp.MustCompile(`\n\s+99%\s+([0-9.]+)(us|ms|s)`)
	non2xxRE   = regexp.MustCompile(`Non-2xx or 3xx responses:\s+([0-9]+)`)
)

func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := rpsRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec in wrk output")
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	if m := requestsRE.FindStringSubmatch(out); m != nil {
		r.requests, _ = strconv.Atoi(m[1])
	}
	dur := func(re *regexp.Regexp) time.Duration {
		m := re.FindStringSubmatch(out)
		if m == nil {
			return -1
		}
		d, _ := time.ParseDuration(m[1] + m[2])
		return d
	}
	r.p50, r.p99 = dur(p50RE), dur(p99RE)
	if m := non2xxRE.FindStringSubmatch(out); m != nil {
		r.non2xx, _ = strconv.Atoi(m[1])
	}
	if m := regexp.MustCompile(`Socket errors: .*`).FindString(out); m != "" {
		r.non2xx += 1 << 20 // make socket errors visible as a failure
	}
	return r, nil
}

// sum is the mean throughput, total requests and CPU, and the median
// per-round p50 and p99 (one round disturbed by other load on the machine
// should not decide the figure).
func sum(rs []wrkResult) wrkResult {
	var out wrkResult
	var p50s, p99s []time.Duration
	for _, r := range rs {
		out.rps += r.rps / float64(len(rs))
		out.requests += r.requests
		out.cpu += r.cpu
		p50s, p99s = append(p50s, r.p50), append(p99s, r.p99)
	}
	out.p50, out.p99 = median(p50s), median(p99s)
	return out
}

func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	if len(ds) == 0 {
		return 0
	}
	if len(ds)%2 == 1 {
		return ds[len(ds)/2]
	}
	return (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// runPlainCaddy runs bin/caddy (which includes the standard modules) with
// a Caddyfile that has no multiconnect in it.
func (c *testCluster) runPlainCaddy(port int, site string) *gateway {
	c.t.Helper()
	path := filepath.Join(c.t.TempDir(), "Caddyfile")
	cfg := "{\n\tadmin off\n\tpersist_config off\n}\n" + site + "\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		c.t.Fatal(err)
	}
	bin := buildCaddy(c.t)
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	g := &gateway{t: c.t, cmd: cmd}
	cmd.Env = []string{"HOME=" + c.t.TempDir(), "PATH=" + os.Getenv("PATH")}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	g.url = fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("plain caddy on %d not listening: %v", port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return g
}
