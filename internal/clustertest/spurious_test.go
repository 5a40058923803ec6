package clustertest

import (
	"fmt"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/measure"
)

// TestNoSpuriousPromotionsUnderLoad runs the throughput benchmark's load
// (MC_BENCH_CLIENTS closed-loop clients, default 256, through the gateway)
// against a 4-shard cluster with two masters and two spare coreapps, at
// the failover settings of BenchmarkFailoverFast (0.05 s / 0.25 s / 65 ms
// keepalive, or MC_FAILOVER_HEARTBEAT, MC_FAILOVER_UNHEALTHY and
// MC_FAILOVER_KEEPALIVE), for MC_SPURIOUS_DURATION. It injects no fault, so
// every promotion, every coreapp step-down and every change of master is
// spurious: it reports each with its reason and fails if there is any.
// Connections the network dropped and the same holder re-made at its epoch
// are reported but are not promotions.
//
//	MC_SPURIOUS_DURATION=10m go test -p 1 -count=1 -run 'TestNoSpuriousPromotionsUnderLoad$' -timeout 30m -v ./internal/clustertest
func TestNoSpuriousPromotionsUnderLoad(t *testing.T) {
	v := os.Getenv("MC_SPURIOUS_DURATION")
	if v == "" {
		t.Skip("a long run (minutes at full load): set MC_SPURIOUS_DURATION, e.g. 10m, to run it")
	}
	dur, err := time.ParseDuration(v)
	if err != nil || dur <= 0 {
		t.Fatalf("MC_SPURIOUS_DURATION=%q: want a positive duration", v)
	}
	clients := envInt("MC_BENCH_CLIENTS", 256)
	o := fastOptions(t, Options{Masters: 2, Coreapps: 6, Shards: 4})
	c := New(t, o)
	caddy := buildCaddyBin(t)
	gp := FreePort(t)
	gwProc, gw := startCaddyProc(t, c, caddy, "gateway", gp,
		fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n}\n:%d {\n\tmulticonnect {\n\t\tbcrypt_cost 4\n\t}\n}\n", gp))
	token := gatewayLogin(t, gw)
	tos := make([]string, 10000)
	for i := range tos {
		tos[i] = strconv.Itoa(15550000000 + i*37)
	}
	body := func(i int) string {
		return fmt.Sprintf(`{"to":"%s","type":"text","text":{"body":"spurious-promotion run %d"}}`, tos[i%len(tos)], i)
	}
	var lastFailover int64
	if err := c.SQL.QueryRow(`SELECT COALESCE(MAX(id), 0) FROM failovers`).Scan(&lastFailover); err != nil {
		t.Fatal(err)
	}
	masterEpoch := func() int64 {
		var e int64
		if err := c.SQL.QueryRow(`SELECT epoch FROM master_lease WHERE id = 1`).Scan(&e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	epoch0 := masterEpoch()
	conns0 := len(c.Connections())
	db0, err := c.DBStatus()
	if err != nil {
		t.Fatal(err)
	}
	load0, _ := os.ReadFile("/proc/loadavg")
	// Whether the machine was shared is measured, not assumed: the host's
	// busy CPU time beside what this run's own processes spent.
	procs := gatewayPathProcs(c, map[string][]int{"gateway": {gwProc.Pid()}})
	host0, hostErr := measure.HostCPU()
	own0 := measure.CPUByRole(procs)
	t.Logf("%d clients through the gateway for %v: heartbeat_interval %gs, unhealthy_interval %gs, keepalive %v; 2 masters, %d coreapps, %d shards",
		clients, dur, o.Heartbeat, o.Unhealthy, o.Keepalive, len(c.Coreapps), o.Shards)

	// Promotions are reported as they happen, with the time into the run,
	// so they can be matched with the nodes' logs.
	start := time.Now()
	var res loadResult
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		res = load(gw+"/v1/messages", token, clients, dur, body)
	}()
	var promotions []string
	for done := false; !done; {
		time.Sleep(time.Second)
		done = time.Since(start) >= dur
		rows, err := c.SQL.Query(`SELECT id, shard_id, COALESCE(old_node, ''), new_node, epoch, reason,
			TIMESTAMPDIFF(MICROSECOND, at, NOW(6)) FROM failovers WHERE id > ? ORDER BY id`, lastFailover)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id, epoch, agoUS int64
			var shard int
			var old, nw, reason string
			if err := rows.Scan(&id, &shard, &old, &nw, &epoch, &reason, &agoUS); err != nil {
				t.Fatal(err)
			}
			lastFailover = id
			at := time.Since(start) - time.Duration(agoUS)*time.Microsecond
			p := fmt.Sprintf("%v into the run: shard %d %s -> %s (epoch %d): %s", at.Round(time.Millisecond), shard, old, nw, epoch, reason)
			t.Log("PROMOTION " + p)
			promotions = append(promotions, p)
		}
		rows.Close()
	}
	wg.Wait()
	window := time.Since(start)
	load1, _ := os.ReadFile("/proc/loadavg")
	db1, err := c.DBStatus()
	if err != nil {
		t.Fatal(err)
	}
	// Group commits share-lock their shard's shard_map row until COMMIT;
	// claim renewals (in shard_claims since schema version 12) no longer
	// wait for them. MariaDB's row lock waits say how often something
	// still waited on a row lock and for how long.
	dbd := db1.Since(db0)
	t.Logf("machine load average at start %q, at end %q",
		strings.TrimSpace(string(load0)), strings.TrimSpace(string(load1)))
	if host1, err := measure.HostCPU(); err == nil && hostErr == nil {
		var own time.Duration
		for role, d := range measure.CPUByRole(procs) {
			own += d - own0[role]
		}
		t.Logf("CPU over the run: the machine was busy %.1f s of %.1f s (%d cores); this run's processes (cluster, gateway, clients) used %.1f s, everything else %.1f s",
			(host1 - host0).Seconds(), window.Seconds()*float64(runtime.NumCPU()), runtime.NumCPU(), own.Seconds(), (host1 - host0 - own).Seconds())
	}
	t.Logf("MariaDB: %d statements, %d fsyncs, %d row lock waits, %d ms waited on row locks in all, longest %d ms",
		dbd.Statements(), dbd.Fsyncs(), dbd["Innodb_row_lock_waits"], dbd["Innodb_row_lock_time"], db1["Innodb_row_lock_time_max"])

	t.Logf("load: %d accepted (%.0f/s), %d errors, p50 %v p99 %v", res.ok, float64(res.ok)/window.Seconds(), res.errs,
		res.p(50), res.p(99))
	if res.errs > 0 {
		t.Logf("first load error: %s", res.firstErr)
	}
	if res.ok == 0 {
		t.Fatal("no message was accepted: the run measured nothing")
	}

	// Every step-down and every network drop, with its reason, from the
	// nodes' own logs and the network's record.
	stepDowns := logLines(c.Coreapps, `"stepped down"`)
	for _, p := range c.Coreapps {
		if n := c.metric(p.Addr, "multiconnect_coreapp_step_downs_total", nil); n > 0 {
			t.Logf("%s: %v step-downs", p.Name, n)
		}
	}
	for _, l := range stepDowns {
		t.Log("STEP-DOWN " + l)
	}
	logSome(t, "COREAPP", logLines(c.Coreapps, `"slow claim renewal"`, `"transport connection lost`, `"transport connect failed"`,
		`"renew claim"`, `"transport refused to extend`, `"connection to the network lost"`))
	// A reconnection the network refused (the epoch still connected on
	// a connection it has not seen end, say) keeps the holder off it.
	logSome(t, "NETWORK", logLines([]*Proc{c.Simnet}, `"connect refused"`))
	logSome(t, "MASTER", logLines(c.Masters, `"promoted coreapp"`, `"promotion failed"`, `"asked the holder`, `"level":"WARN"`,
		`"level":"ERROR"`))
	for _, p := range c.Coreapps {
		_, body, _ := c.Internal("GET", p.Addr, "/metrics", "")
		vals := map[string]float64{}
		for _, line := range strings.Split(string(body), "\n") {
			if f := strings.Fields(line); len(f) == 2 {
				vals[f[0]], _ = strconv.ParseFloat(f[1], 64)
			}
		}
		n, sum := vals["multiconnect_coreapp_claim_renewal_seconds_count"], vals["multiconnect_coreapp_claim_renewal_seconds_sum"]
		gn, gsum := vals["multiconnect_coreapp_claim_renewal_gap_seconds_count"], vals["multiconnect_coreapp_claim_renewal_gap_seconds_sum"]
		if n > 0 && gn > 0 {
			t.Logf("%s: %v claim renewals, mean round trip %.1f ms, mean gap between renewals %.1f ms", p.Name, n,
				1000*sum/n, 1000*gsum/gn)
		}
	}
	drops, ended := map[string]int{}, 0
	for _, iv := range c.Connections()[conns0:] {
		if !iv.Open {
			drops[iv.EndReason]++
			ended++
		}
	}
	keys := make([]string, 0, len(drops))
	for k := range drops {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("network: %d connections ended: %s", drops[k], k)
	}
	epochs := masterEpoch() - epoch0

	t.Logf("SUMMARY %v at %d clients, heartbeat_interval %gs, unhealthy_interval %gs, keepalive %v: %d promotions, %d coreapp step-downs, %d master lease changes, %d network connections ended, %.0f accepted/s",
		window.Round(time.Second), clients, o.Heartbeat, o.Unhealthy, o.Keepalive, len(promotions), len(stepDowns), epochs,
		ended, float64(res.ok)/window.Seconds())
	if len(promotions) > 0 {
		t.Errorf("%d promotions with no fault injected", len(promotions))
	}
	if len(stepDowns) > 0 {
		t.Errorf("%d coreapp step-downs with no fault injected", len(stepDowns))
	}
	if epochs != 0 {
		t.Errorf("the master lease changed hands %d times with no fault injected", epochs)
	}
	c.RequireNoViolations()
}

// logLines returns the lines of procs' logs that contain any of pats,
// each prefixed with the process name.
func logLines(procs []*Proc, pats ...string) []string {
	var out []string
	re := regexp.MustCompile(strings.Join(quoteAll(pats), "|"))
	for _, p := range procs {
		for _, l := range strings.Split(p.Log(), "\n") {
			if re.MatchString(l) {
				out = append(out, p.Name+": "+l)
			}
		}
	}
	return out
}

// logSome logs lines counted by message, and the first few of each.
func logSome(t *testing.T, what string, lines []string) {
	msg := regexp.MustCompile(`"msg":"([^"]*)"`)
	counts, shown := map[string]int{}, map[string]int{}
	for _, l := range lines {
		m := "?"
		if s := msg.FindStringSubmatch(l); s != nil {
			m = s[1]
		}
		counts[m]++
		if shown[m]++; shown[m] <= 5 {
			t.Log(what + " " + l)
		}
	}
	for m, n := range counts {
		t.Logf("%s: %d lines %q", what, n, m)
	}
}

func quoteAll(pats []string) []string {
	out := make([]string, len(pats))
	for i, p := range pats {
		out[i] = regexp.QuoteMeta(p)
	}
	return out
}
