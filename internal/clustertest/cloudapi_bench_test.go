package clustertest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// BenchmarkCloudAPIThroughput drives the whole send path on the Cloud API
// transport: closed-loop On-Premises clients -> gateway (bin/caddy with our
// module) -> primary coreapps (group commit in MariaDB) -> transport-cloudapi
// (delivery engine, attempts recorded in MariaDB) -> graphapid, the Graph
// API test server, which enforces the number's throughput limit (130429
// beyond it) and Meta's pair rate (131056), and sends a signed "sent"
// status webhook per message back to the gateway's /cloudapi/webhook.
// One cluster per limit (2 masters, 3 coreapps, 2 shards), the limit given
// to graphapid and MC_CLOUDAPI_THROUGHPUT alike; each run prints accepted
// and delivered-at-the-server messages/s, accept latency, the server's
// 130429 and 131056 answers, the backlog when the load stops, the largest
// count the server accepted in any one-second window, and CPU seconds per
// process. A limited run fails if the server answered 130429 or any
// one-second window held more than the limit.
//
//	go test -run '^$' -bench 'BenchmarkCloudAPIThroughput$' -benchtime 1x -timeout 30m ./internal/clustertest
//
// MC_BENCH_LIMITS (default "80,1000,0,simnet": 0 is unlimited, simnet the
// same cluster and load on the simulated network), MC_BENCH_CLIENTS
// (default 64), MC_BENCH_SECONDS (default 20), MC_BENCH_WARMUP (seconds,
// default 5) and MC_BENCH_STATUSES (default "sent"; "none" for no status
// webhooks) tune it.
func BenchmarkCloudAPIThroughput(b *testing.B) {
	// -1 stands for the simulated network, same cluster, same load.
	limits := []int{80, 1000, 0, -1}
	if v := os.Getenv("MC_BENCH_LIMITS"); v != "" {
		limits = nil
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f == "simnet" {
				limits = append(limits, -1)
				continue
			}
			n, err := strconv.Atoi(f)
			if err != nil || n < 0 {
				b.Fatalf("MC_BENCH_LIMITS: %q", v)
			}
			limits = append(limits, n)
		}
	}
	for _, limit := range limits {
		name := "limit=" + strconv.Itoa(limit)
		switch limit {
		case 0:
			name = "unlimited"
		case -1:
			name = "simnet"
		}
		b.Run(name, func(b *testing.B) {
			for it := 0; it < b.N; it++ {
				benchCloudAPI(b, limit)
			}
		})
	}
}

// benchCloudRecipients: the pair interval is Meta's 6 s, so at up to
// 3000 messages/s in all a recipient comes round every 6.6 s at the
// earliest and the pair limit never interferes (the run counts 131056 to
// show it).
const (
	benchCloudRecipients = 20000
	benchPairInterval    = 6 * time.Second
)

func benchCloudAPI(b *testing.B, limit int) {
	clients := envInt("MC_BENCH_CLIENTS", 64)
	dur := time.Duration(envInt("MC_BENCH_SECONDS", 20)) * time.Second
	warm := time.Duration(envInt("MC_BENCH_WARMUP", 5)) * time.Second
	if warm >= dur {
		b.Fatalf("warm-up %v must be shorter than the run %v", warm, dur)
	}
	statuses := []string{"sent"}
	if v := os.Getenv("MC_BENCH_STATUSES"); v == "none" {
		statuses = []string{}
	} else if v != "" {
		statuses = strings.Split(v, ",")
	}
	gwPort := FreePort(b)
	lim := strconv.Itoa(limit)
	simnet := limit < 0
	o := Options{Masters: 2, Coreapps: 3, Shards: 2, Heartbeat: 1, Unhealthy: 5}
	if !simnet {
		o.CloudAPI = true
		o.GraphArgs = []string{"-throughput", lim, "-pair-interval", benchPairInterval.String(), "-log-level", "warn",
			"-webhook-url", fmt.Sprintf("http://127.0.0.1:%d/cloudapi/webhook", gwPort)}
		// Later entries win over CloudEnv's MC_CLOUDAPI_THROUGHPUT=0.
		o.CoreappEnv = func(*Cluster, int) []string { return []string{"MC_CLOUDAPI_THROUGHPUT=" + lim} }
	}
	c := New(b, o)
	if !simnet {
		if err := c.GraphDo("POST", "/_test/statuses", map[string]any{"statuses": statuses}, nil); err != nil {
			b.Fatal(err)
		}
	}
	gwProc, gw := startCaddyProc(b, c, buildCaddyBin(b), "gateway", gwPort, fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
}
:%d {
	multiconnect {
		bcrypt_cost 4
		cloudapi_app_secret %s
		cloudapi_verify_token %s
		cloudapi_phone_number_id %s
	}
}
`, gwPort, CloudAppSecret, CloudVerifyToken, CloudPhoneID))
	token := gatewayLogin(b, gw)
	tos := make([]string, benchCloudRecipients)
	for i := range tos {
		tos[i] = strconv.Itoa(15550000000 + i*37)
	}
	body := func(i int) string {
		return fmt.Sprintf(`{"to":"%s","type":"text","text":{"body":"benchmark message %d"}}`, tos[i%len(tos)], i)
	}
	names := map[int]string{os.Getpid(): "load generator (go test)", gwProc.Pid(): "gateway"}
	if simnet {
		names[c.Simnet.Pid()] = "simnetd"
	} else {
		names[c.Graph.Pid()] = "graphapid"
	}
	for _, p := range append(append([]*Proc(nil), c.Masters...), c.Coreapps...) {
		names[p.Pid()] = p.Name
	}
	cpu0 := cpuTicks()

	b.ResetTimer()
	start := time.Now()
	// The simulated network keeps no times: its count is read at the end
	// of the warm-up and of the load.
	atWarm := make(chan int, 1)
	if simnet {
		go func() {
			time.Sleep(warm)
			atWarm <- len(c.NetworkMessages(""))
		}()
	}
	r := load(gw+"/v1/messages", token, clients, dur, body)
	window := time.Since(start)
	b.StopTimer()
	cpu1 := cpuTicks()
	if simnet {
		atEnd := len(c.NetworkMessages(""))
		delivered := float64(atEnd-<-atWarm) / (window - warm).Seconds()
		b.ReportMetric(float64(r.ok)/window.Seconds(), "accepted/s")
		b.ReportMetric(delivered, "delivered/s")
		b.Logf("\n| simulated network | %d, %v | %.0f | %.0f | %v | %v | %d | | | %d of %d accepted | |\nCPU seconds during the load: %s; load average at the end %s",
			clients, window.Round(100*time.Millisecond), float64(r.ok)/window.Seconds(), delivered, r.p(50), r.p(99), r.errs,
			r.ok-atEnd, r.ok, cpuReport(cpu0, cpu1, names), loadAvg())
		return
	}

	srv := graphRecord(b, c.GraphURL)
	var at []time.Time
	for _, m := range srv.Messages {
		at = append(at, m.At)
	}
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	inWindow, sustained := 0, 0
	for _, t := range at {
		if t.Before(start) || t.After(start.Add(window)) {
			continue
		}
		inWindow++
		if !t.Before(start.Add(warm)) {
			sustained++
		}
	}
	throttled, pair := 0, 0
	for _, q := range srv.Requests {
		switch q.Code {
		case graphapi.CodeThroughput:
			throttled++
		case graphapi.CodePairRate:
			pair++
		}
	}
	// The largest number of messages the server took in any one-second
	// window (sliding, over its own timestamps); and the same per shard
	// and over the requests' arrival (before the body was read and
	// validated), to tell the senders' spacing from the server's own
	// scheduling.
	maxWin := maxWindow(at)
	arrival, sentAt := map[int64]time.Time{}, map[int64]time.Time{}
	for _, q := range srv.Requests {
		arrival[q.Seq], sentAt[q.Seq] = q.Start, q.Sent
	}
	var arrived, sent []time.Time
	byShard, sentByShard := map[int][]time.Time{}, map[int][]time.Time{}
	for _, m := range srv.Messages {
		byShard[m.Shard] = append(byShard[m.Shard], m.At)
		arrived = append(arrived, arrival[m.Request])
		sent = append(sent, sentAt[m.Request])
		sentByShard[m.Shard] = append(sentByShard[m.Shard], sentAt[m.Request])
	}
	var shardWins []string
	for s := 0; s < c.Opts.Shards; s++ {
		shardWins = append(shardWins, fmt.Sprintf("shard %d: %d (by the sender's clock %d)", s, maxWindow(byShard[s]), maxWindow(sentByShard[s])))
	}
	accepted := float64(r.ok) / window.Seconds()
	delivered := float64(sustained) / (window - warm).Seconds()
	backlog := r.ok - len(at)
	b.ReportMetric(accepted, "accepted/s")
	b.ReportMetric(delivered, "delivered/s")
	b.ReportMetric(float64(r.p(50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(r.p(99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(throttled), "130429s")
	b.ReportMetric(float64(maxWin), "max-1s-window")
	limitText := "unlimited"
	if limit > 0 {
		limitText = strconv.Itoa(limit) + "/s"
	}
	// One Logf: go test keeps only the first lines of each benchmark's log.
	b.Logf("\n| limit | clients, run | accepted/s | delivered at the server/s (after %v warm-up) | p50 | p99 | errors | 130429 | 131056 | backlog at the end | largest 1 s window at the server |\n"+
		"|---|---|---|---|---|---|---|---|---|---|---|\n"+
		"| %s | %d, %v | %.0f | %.0f | %v | %v | %d | %d | %d | %d of %d accepted | %d |\n"+
		"server: %d messages during the load, %d in all; %d requests; largest 1 s window by arrival %d, by the sender's clock (the graph client's X-Multiconnect-Sent) %d, by the server's clock per shard %s\nCPU seconds during the load: %s; load average at the end %s",
		warm, limitText, clients, window.Round(100*time.Millisecond), accepted, delivered, r.p(50), r.p(99), r.errs,
		throttled, pair, backlog, r.ok, maxWin, inWindow, len(at), len(srv.Requests), maxWindow(arrived), maxWindow(sent), strings.Join(shardWins, ", "), cpuReport(cpu0, cpu1, names), loadAvg())
	if r.errs > 0 {
		b.Logf("first error: %s", r.firstErr)
	}
	// A batch the plugin could not finish within the Send's deadline
	// fails whole (ErrLater) and the outbox backs off before sending it
	// again: how often, and why, tells a limit unused from a limit held.
	retries, first := 0, ""
	for _, p := range c.Coreapps {
		for _, l := range strings.Split(p.Log(), "\n") {
			if strings.Contains(l, "outbox: sending failed") {
				retries++
				if first == "" {
					first = l
				}
			}
		}
	}
	b.Logf("outbox batches failed and sent again: %d; the first: %.600s", retries, first)
	if limit > 0 {
		if throttled > 0 {
			b.Errorf("the server answered 130429 %d times at a limit of %d/s set alike on both sides", throttled, limit)
		}
		// The engines hold the limit where requests leave: by the
		// sender's clock no second may hold more. By the server's clock
		// it is no failure: on a loaded machine the way and graphapid
		// bunch requests that left spaced, and the server's limit (a
		// token bucket of one second's burst, 130429) is what counts.
		if w := maxWindow(sent); w > limit {
			b.Errorf("the senders let %d requests go in one second at a limit of %d/s", w, limit)
		}
		if maxWin > limit {
			b.Logf("the server took %d messages in one second at a limit of %d/s (load average %s)", maxWin, limit, loadAvg())
		}
	}
	if pair > 0 {
		b.Errorf("the server answered 131056 %d times: the pair interval interfered", pair)
	}
}

// maxWindow is the largest number of times in any one-second window.
func maxWindow(at []time.Time) int {
	at = append([]time.Time(nil), at...)
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	best, lo := 0, 0
	for hi := range at {
		for at[hi].Sub(at[lo]) >= time.Second {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

// graphRecord is the part of graphapid's state the benchmark reads (the
// whole state, bodies included, is tens of megabytes after a run).
type graphRecordDoc struct {
	Requests []struct {
		Seq   int64     `json:"seq"`
		Code  int       `json:"code"`
		Sent  time.Time `json:"sent"`
		Start time.Time `json:"start"`
	} `json:"requests"`
	Messages []struct {
		At      time.Time `json:"at"`
		Shard   int       `json:"shard"`
		Request int64     `json:"request"`
	} `json:"messages"`
}

func graphRecord(b *testing.B, url string) graphRecordDoc {
	hc := &http.Client{Timeout: 2 * time.Minute}
	resp, err := hc.Get(url + "/_test/state")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var doc graphRecordDoc
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		b.Fatalf("graphapid state: %v", err)
	}
	return doc
}

// cpuTicks reads utime+stime (clock ticks) of this process and all its
// descendants (nodes, plugins, graphapid, the gateway, MariaDB), by pid,
// with each one's parent and command name.
type procCPU struct {
	ppid  int
	comm  string
	ticks int64
}

func cpuTicks() map[int]procCPU {
	out := map[int]procCPU{}
	all := map[int]procCPU{}
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(raw)
		lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if lp < 0 || rp < lp {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(s[:lp]))
		f := strings.Fields(s[rp+1:])
		if len(f) < 13 {
			continue
		}
		// After the name: state(0) ppid(1) ... utime(11) stime(12).
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		all[pid] = procCPU{ppid: ppid, comm: s[lp+1 : rp], ticks: ut + st}
	}
	me := os.Getpid()
	for pid, pc := range all {
		for p := pid; p > 1; p = all[p].ppid {
			if p == me {
				out[pid] = pc
				break
			}
			if _, ok := all[p]; !ok {
				break
			}
		}
	}
	return out
}

// cpuReport lists CPU seconds spent between two samples, largest first;
// a plugin is named after its coreapp.
func cpuReport(before, after map[int]procCPU, names map[int]string) string {
	const hz = 100 // USER_HZ on Linux
	type row struct {
		name string
		sec  float64
	}
	var rows []row
	total := 0.0
	for pid, a := range after {
		name := names[pid]
		if name == "" {
			name = a.comm
			if parent := names[a.ppid]; parent != "" && a.ppid != os.Getpid() {
				name = a.comm + " (" + parent + ")"
			}
		}
		sec := float64(a.ticks-before[pid].ticks) / hz
		if sec < 0.05 {
			continue
		}
		total += sec
		rows = append(rows, row{name, sec})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].sec > rows[j].sec })
	parts := []string{fmt.Sprintf("total %.1f", total)}
	for _, r := range rows {
		parts = append(parts, fmt.Sprintf("%s %.1f", r.name, r.sec))
	}
	return strings.Join(parts, ", ")
}

// loadAvg is the machine's 1-minute load average, as /proc says it.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Fields(string(b))[0]
}
