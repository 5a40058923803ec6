package clustertest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/measure"
)

// The costs BenchmarkMessagesThroughput reports beside its rates: CPU per
// process role, MariaDB's counters, the coreapps' group commits (the
// window over them also serves BenchmarkCallbacks), the backlog over time
// and optional CPU profiles of every Go process.

// costRoles is the order the CPU table lists the roles in. "loadgen" is
// this test process (/proc/self): the 256 HTTP clients, and also the
// harness's own goroutines (the backlog sampler, profile downloads), which
// are small beside the clients, and with MC_BENCH_WEBHOOK the webhook
// receiver, which is not.
var costRoles = []string{"gateway", "coreapp", "plugin", "network", "mariadb", "master", "loadgen"}

// costWindow measures what processes (role -> PIDs) and MariaDB spend
// between its start and its stop, and the coreapps' group commits. Both
// ends read the database inside the window and the coreapps' /metrics
// outside it, so the window holds none of the harness's HTTP requests.
type costWindow struct {
	c      *Cluster
	procs  map[string][]int
	began  time.Time
	cpu    map[string]time.Duration
	db     measure.DBStatus
	groups groupCommits
}

func startCosts(tb testing.TB, c *Cluster, procs map[string][]int) *costWindow {
	tb.Helper()
	w := &costWindow{c: c, procs: procs, groups: readGroupCommits(c)}
	w.began = time.Now()
	w.cpu = measure.CPUByRole(procs)
	w.db = mustDBStatus(tb, c)
	return w
}

// stop ends the window over n messages (or requests) and reports what
// they cost.
func (w *costWindow) stop(tb testing.TB, n int) costReport {
	tb.Helper()
	db := mustDBStatus(tb, w.c)
	r := costReport{n: n, window: time.Since(w.began), cpu: measure.CPUByRole(w.procs), db: db.Since(w.db)}
	for role := range r.cpu { // the roles still running at the stop
		r.cpu[role] -= w.cpu[role]
	}
	g := readGroupCommits(w.c)
	r.groups = groupCommits{
		commits:         g.commits - w.groups.commits,
		rows:            g.rows - w.groups.rows,
		commitSeconds:   g.commitSeconds - w.groups.commitSeconds,
		callbacksStored: g.callbacksStored - w.groups.callbacksStored,
	}
	return r
}

func mustDBStatus(tb testing.TB, c *Cluster) measure.DBStatus {
	tb.Helper()
	st, err := c.DBStatus()
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

// gatewayPathProcs is every process on the gateway's path: the cluster's,
// extra's and this process as "loadgen".
func gatewayPathProcs(c *Cluster, extra map[string][]int) map[string][]int {
	procs := c.Processes()
	for role, pids := range extra {
		procs[role] = append(procs[role], pids...)
	}
	procs["loadgen"] = []int{os.Getpid()}
	return procs
}

// groupCommits sums the coreapps' accept histograms (their /metrics).
type groupCommits struct {
	commits, rows, commitSeconds float64
	callbacksStored              float64
}

func readGroupCommits(c *Cluster) groupCommits {
	var g groupCommits
	for _, p := range c.Coreapps {
		if p.Exited() {
			continue
		}
		_, m, err := c.Internal("GET", p.Addr, "/metrics", "")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(m), "\n") {
			f := strings.Fields(line)
			if len(f) != 2 {
				continue
			}
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				continue
			}
			switch f[0] {
			case "multiconnect_accept_batch_rows_count":
				g.commits += v
			case "multiconnect_accept_batch_rows_sum":
				g.rows += v
			case "multiconnect_accept_commit_seconds_sum":
				g.commitSeconds += v
			case "multiconnect_callbacks_stored_total":
				g.callbacksStored += v
			}
		}
	}
	return g
}

// costReport is what a costWindow measured.
type costReport struct {
	n      int // messages (or requests) the window carried
	window time.Duration
	cpu    map[string]time.Duration
	db     measure.DBStatus
	groups groupCommits
}

// perMsg is a role's CPU per message in microseconds.
func (r costReport) perMsg(role string) float64 {
	if r.n == 0 {
		return 0
	}
	return float64(r.cpu[role].Microseconds()) / float64(r.n)
}

func (r costReport) total() time.Duration {
	var t time.Duration
	for _, d := range r.cpu {
		t += d
	}
	return t
}

// totalPerMsg is every role's CPU per message in microseconds.
func (r costReport) totalPerMsg() float64 {
	return float64(r.total().Microseconds()) / float64(max(r.n, 1))
}

// roles are the roles measured, sorted.
func (r costReport) roles() []string {
	var out []string
	for role := range r.cpu {
		out = append(out, role)
	}
	sort.Strings(out)
	return out
}

func (r costReport) dbPerMsg(v int64) float64 {
	if r.n == 0 {
		return 0
	}
	return float64(v) / float64(r.n)
}

// table renders the CPU per message by role, with each role's share of
// one core over the window.
func (r costReport) table(title string) string {
	var s strings.Builder
	fmt.Fprintf(&s, "| %s (%d messages, %v) | CPU µs per message | cores busy |\n|---|---|---|\n", title, r.n, r.window.Round(time.Millisecond))
	for _, role := range costRoles {
		if _, ok := r.cpu[role]; !ok {
			continue
		}
		fmt.Fprintf(&s, "| %s | %.0f | %.2f |\n", role, r.perMsg(role), r.cpu[role].Seconds()/r.window.Seconds())
	}
	fmt.Fprintf(&s, "| total | %.0f | %.2f |", r.totalPerMsg(), r.total().Seconds()/r.window.Seconds())
	return s.String()
}

// dbLines renders MariaDB's work per message and the group commits.
func (r costReport) dbLines() string {
	d := r.db
	rowsPerCommit := 0.0
	if r.groups.commits > 0 {
		rowsPerCommit = r.groups.rows / r.groups.commits
	}
	commitMS := 0.0
	if r.groups.commits > 0 {
		commitMS = 1000 * r.groups.commitSeconds / r.groups.commits
	}
	var s strings.Builder
	fmt.Fprintf(&s, "MariaDB per message: %.2f statements, %.3f fsyncs (Innodb_data_fsyncs), %.3f redo log writes, %.0f bytes of redo log; handler rows written %.2f updated %.2f deleted %.2f, index reads %.1f, index next %.1f, scans next %.1f\n",
		r.dbPerMsg(d.Statements()), r.dbPerMsg(d.Fsyncs()), r.dbPerMsg(d["Innodb_log_writes"]), r.dbPerMsg(d["Innodb_os_log_written"]),
		r.dbPerMsg(d["Handler_write"]), r.dbPerMsg(d["Handler_update"]), r.dbPerMsg(d["Handler_delete"]),
		r.dbPerMsg(d["Handler_read_key"]), r.dbPerMsg(d["Handler_read_next"]), r.dbPerMsg(d["Handler_read_rnd_next"]))
	fmt.Fprintf(&s, "statements by command over the window (%d in all, %d messages): %s\n", d.Statements(), r.n, d.TopCommands(14))
	fmt.Fprintf(&s, "group commits: %.0f holding %.0f rows (%.1f rows each, %.1f ms each); callbacks stored %.0f (%.2f per message)",
		r.groups.commits, r.groups.rows, rowsPerCommit, commitMS, r.groups.callbacksStored, r.dbPerMsg(int64(r.groups.callbacksStored)))
	return s.String()
}

// backlogSample is accepted-so-far minus delivered-so-far at one second.
type backlogSample struct {
	at                  time.Duration
	accepted, delivered int64
}

// backlogSampler reads the load's 201 count and the network's message
// count (GET /v1/messages/count: one small request a second) every second.
type backlogSampler struct {
	c       *Cluster
	before  int64
	acc     *atomic.Int64
	start   time.Time
	stop    chan struct{}
	done    sync.WaitGroup
	samples []backlogSample
}

func startBacklogSampler(c *Cluster, before int64, acc *atomic.Int64, start time.Time) *backlogSampler {
	s := &backlogSampler{c: c, before: before, acc: acc, start: start, stop: make(chan struct{})}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
				n, err := networkCount(c)
				if err != nil {
					continue
				}
				s.samples = append(s.samples, backlogSample{time.Since(start), acc.Load(), n - before})
			}
		}
	}()
	return s
}

// Stop ends the sampling and returns the samples.
func (s *backlogSampler) Stop() []backlogSample {
	close(s.stop)
	s.done.Wait()
	return s.samples
}

// networkCount is how many messages the network has accepted.
func networkCount(c *Cluster) (int64, error) {
	var out struct {
		Count int64 `json:"count"`
	}
	if err := c.SimnetJSON("/v1/messages/count", &out); err != nil {
		return 0, err
	}
	return out.Count, nil
}

// backlogVerdict fits a line through the backlog of the samples taken
// during the load (the first second left out: the pipeline filling up)
// and calls it flat when it grows by less than 2 % of the accept rate: a
// backlog that only holds what is in flight does not grow at all, and one
// that shrinks (delivery catching up) is fine too.
func backlogVerdict(samples []backlogSample, window time.Duration, acceptRate float64) (slope float64, maxBacklog int64, flat bool, series string) {
	var xs, ys []float64
	var parts []string
	for _, s := range samples {
		bl := s.accepted - s.delivered
		parts = append(parts, strconv.FormatInt(bl, 10))
		maxBacklog = max(maxBacklog, bl)
		if s.at > time.Second && s.at <= window {
			xs = append(xs, s.at.Seconds())
			ys = append(ys, float64(bl))
		}
	}
	series = strings.Join(parts, " ")
	if len(xs) < 2 {
		return 0, maxBacklog, false, series
	}
	var mx, my float64
	for i := range xs {
		mx += xs[i]
		my += ys[i]
	}
	mx /= float64(len(xs))
	my /= float64(len(ys))
	var sxy, sxx float64
	for i := range xs {
		sxy += (xs[i] - mx) * (ys[i] - my)
		sxx += (xs[i] - mx) * (xs[i] - mx)
	}
	slope = sxy / sxx
	return slope, maxBacklog, slope < 0.02*acceptRate, series
}

// profiler takes CPU profiles of every Go process over the load window
// when MC_BENCH_PPROF names a directory: the daemons through their
// pprofserve listeners (their addresses in addrDir), the gateway through
// Caddy's admin endpoint.
type profiler struct {
	out, addrDir string
	gateway      string // the gateway's admin address, host:port
	gatewayPid   int
}

// Start asks every process for a profile of the next d and returns a
// function that waits for them and reports what it saved.
func (p profiler) Start(d time.Duration) func() string {
	targets := map[string]string{} // output name -> profile URL
	secs := int(math.Ceil(d.Seconds()))
	files, _ := filepath.Glob(filepath.Join(p.addrDir, "*.addr"))
	for _, f := range files {
		addr, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(f), ".addr")
		targets[name] = fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs)
	}
	targets[fmt.Sprintf("gateway-%d", p.gatewayPid)] = fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.gateway, secs)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var saved, failed []string
	hc := &http.Client{Timeout: d + 30*time.Second}
	for name, url := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := fetchTo(hc, url, filepath.Join(p.out, name+".pprof"))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", name, err))
				return
			}
			saved = append(saved, name)
		}()
	}
	return func() string {
		wg.Wait()
		sort.Strings(saved)
		sort.Strings(failed)
		s := fmt.Sprintf("CPU profiles of the load window in %s: %s", p.out, strings.Join(saved, " "))
		if len(failed) > 0 {
			s += "; failed: " + strings.Join(failed, "; ")
		}
		return s
	}
}

func fetchTo(hc *http.Client, url, path string) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, body)
	}
	return os.WriteFile(path, body, 0o644)
}

// generalLog turns MariaDB's general query log on into path (every
// statement every client sends, with its text) and returns the function
// that turns it off again. It costs the database time of its own: a run
// with it measures which statements, not how fast.
func generalLog(b testing.TB, c *Cluster, path string) func() {
	b.Helper()
	for _, q := range []string{`SET GLOBAL log_output = 'FILE'`, `SET GLOBAL general_log_file = '` + strings.ReplaceAll(path, `'`, ``) + `'`, `SET GLOBAL general_log = ON`} {
		if _, err := c.SQL.Exec(q); err != nil {
			b.Fatalf("%s: %v", q, err)
		}
	}
	return func() {
		if _, err := c.SQL.Exec(`SET GLOBAL general_log = OFF`); err != nil {
			b.Errorf("general log off: %v", err)
		}
	}
}

// benchHook is the webhook of MC_BENCH_WEBHOOK: an HTTP server in this
// process answering 200 to every callback and counting the statuses in
// them. It runs in the load generator's process, so its CPU is in
// "loadgen".
type benchHook struct {
	url      string
	statuses atomic.Int64
	requests atomic.Int64
	srv      *http.Server
}

func startBenchHook(b testing.TB) *benchHook {
	b.Helper()
	h := &benchHook{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	h.url = "http://" + ln.Addr().String() + "/hook"
	h.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p struct {
			Statuses []json.RawMessage `json:"statuses"`
		}
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		h.requests.Add(1)
		h.statuses.Add(int64(len(p.Statuses)))
	}), ReadHeaderTimeout: 5 * time.Second}
	go h.srv.Serve(ln)
	b.Cleanup(func() { h.srv.Close() })
	return h
}

// plainRun is one load against plain Caddy and the CPU it took: the Caddy
// process (proxy and respond together) and this process.
type plainRun struct {
	res        loadResult
	caddy, gen time.Duration
}

func runPlain(url string, pid, clients int, d time.Duration, body func(int) string) plainRun {
	roles := map[string][]int{"caddy": {pid}, "loadgen": {os.Getpid()}}
	a := measure.CPUByRole(roles)
	res := load(url, "", clients, d, body)
	z := measure.CPUByRole(roles)
	return plainRun{res: res, caddy: z["caddy"] - a["caddy"], gen: z["loadgen"] - a["loadgen"]}
}

// plus is both runs as one: the reference measured in two halves, one
// before and one after the gateway's load, so that what else the machine
// ran meanwhile weighs on both sides alike.
func (p plainRun) plus(q plainRun) plainRun {
	r := plainRun{caddy: p.caddy + q.caddy, gen: p.gen + q.gen}
	r.res = loadResult{ok: p.res.ok + q.res.ok, errs: p.res.errs + q.res.errs, elapsed: p.res.elapsed + q.res.elapsed,
		firstErr: cmp.Or(p.res.firstErr, q.res.firstErr)}
	r.res.lat = append(append(r.res.lat, p.res.lat...), q.res.lat...)
	sort.Slice(r.res.lat, func(i, j int) bool { return r.res.lat[i] < r.res.lat[j] })
	return r
}

// perReq is d per request of the run, in microseconds.
func (p plainRun) perReq(d time.Duration) float64 {
	return float64(d.Microseconds()) / float64(max(p.res.ok, 1))
}
