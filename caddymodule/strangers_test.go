package caddymodule

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/clustertest"
	"github.com/multiconnect/multiconnect/internal/measure"
)

// dbStatus reads MariaDB's counters; Since of two counts the statements
// clients sent in between.
func dbStatus(t *testing.T, cl *clustertest.Cluster) measure.DBStatus {
	t.Helper()
	st, err := cl.DBStatus()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestUnknownTokensLeaveMySQLBounded sends 5,000 random bearer tokens a
// second to the gateway for 5 s while a user with a real token sends
// messages: the statements MySQL receives beyond its idle rate stay within
// token_lookup_rate (plus slack), the user's requests all succeed, and the
// shard's primary keeps its connection (its claim renewals were on time:
// no step-down).
func TestUnknownTokensLeaveMySQLBounded(t *testing.T) {
	const (
		rate      = 5000
		workers   = 50
		flood     = 5 * time.Second
		maxExtraS = 400 // statements per second above idle: token_lookup_rate 200, plus slack
	)
	cl, g := startWithRealNodes(t, clustertest.Options{Masters: 1, Coreapps: 2, Shards: 1}, "")
	admin := g.loginAdmin()
	conn0 := cl.WaitConnected(0, "", 5*time.Second)
	stepDowns0 := stepDowns(t, cl, conn0.Node)

	// The idle rate: masters, coreapps and the gateway's own polls.
	q0 := dbStatus(t, cl)
	idleStart := time.Now()
	time.Sleep(3 * time.Second)
	q1 := dbStatus(t, cl)
	idleRate := float64(q1.Since(q0).Statements()) / time.Since(idleStart).Seconds()

	var sent, refused atomic.Int64
	statuses := sync.Map{}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			per := time.Second * workers / rate
			next := time.Now()
			for time.Since(start) < flood {
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				next = next.Add(per)
				var tok [32]byte
				rand.Read(tok[:])
				req, _ := http.NewRequest("GET", g.url+"/v1/health", nil)
				req.Header.Set("Authorization", "Bearer "+hex.EncodeToString(tok[:]))
				resp, err := client.Do(req)
				sent.Add(1)
				if err != nil {
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusTooManyRequests {
					refused.Add(1)
				}
				n, _ := statuses.LoadOrStore(resp.StatusCode, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
			}
		}()
	}
	// Meanwhile a real user sends messages with a real token.
	userOK, userFailed := 0, []string{}
	for time.Since(start) < flood {
		st, body := g.do("POST", "/v1/messages", messageBody("15550109999"), jsonHeaders(bearer(admin)))
		if st == http.StatusCreated {
			userOK++
		} else if len(userFailed) < 5 {
			userFailed = append(userFailed, fmt.Sprintf("HTTP %d %s", st, body))
		}
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	elapsed := time.Since(start)
	q2 := dbStatus(t, cl)
	extra := float64(q2.Since(q1).Statements())/elapsed.Seconds() - idleRate
	got := map[int]int64{}
	statuses.Range(func(k, v any) bool { got[k.(int)] = v.(*atomic.Int64).Load(); return true })
	t.Logf("sent %d random tokens in %s (%.0f/s); answers %v; MySQL statements: idle %.0f/s, during the flood %.0f/s above idle; the user's messages: %d accepted",
		sent.Load(), elapsed.Round(time.Millisecond), float64(sent.Load())/elapsed.Seconds(), got, idleRate, extra, userOK)
	if refused.Load() > 0 {
		t.Errorf("%d random tokens got an answer other than 401 or 429", refused.Load())
	}
	if extra > maxExtraS {
		t.Errorf("MySQL received %.0f statements/s above idle during the flood, more than %d: every unknown token costs a query", extra, maxExtraS)
	}
	if len(userFailed) > 0 || userOK == 0 {
		t.Errorf("the real user's messages failed during the flood (%d accepted): %v", userOK, userFailed)
	}
	if float64(sent.Load())/elapsed.Seconds() > 2*200 && got[http.StatusTooManyRequests] == 0 {
		t.Errorf("over twice token_lookup_rate of unknown tokens, and none was refused with 429")
	}
	// A token issued now is looked up at once (the limiter refills).
	if tok := g.loginAdmin(); tok == "" {
		t.Error("no token")
	} else if st, body := g.do("GET", "/v1/users/admin", "", bearer(tok)); st != http.StatusOK {
		t.Errorf("a new token right after the flood: HTTP %d %s", st, body)
	}
	// One unknown token presented again and again is refused from the
	// negative cache, without a lookup.
	unknownHits := func() float64 {
		st, body := g.do("GET", "/metrics?format=prometheus", "", map[string]string{"Authorization": "Apikey " + testAPIKey})
		if st != http.StatusOK {
			t.Fatalf("GET /metrics: HTTP %d", st)
		}
		return metricValue(body, `multiconnect_gateway_token_cache_total{result="unknown"}`)
	}
	before := unknownHits()
	for i := 0; i < 100; i++ {
		if st, body := g.do("GET", "/v1/health", "", bearer("the-same-unknown-token")); st != http.StatusUnauthorized {
			t.Fatalf("an unknown token: HTTP %d %s", st, body)
		}
	}
	if n := unknownHits() - before; n != 99 {
		t.Errorf("100 presentations of one unknown token: %g refused from the negative cache, want 99 (one lookup)", n)
	}
	// A late claim renewal makes the holder step down (counted) and the
	// masters give the shard a new epoch. (The network's 250 ms keepalive
	// may drop a CPU-starved plugin's connection meanwhile; it reconnects
	// at the same epoch, which is not a step-down.)
	if n := stepDowns(t, cl, conn0.Node); n != stepDowns0 {
		t.Errorf("the shard's primary stepped down %g times during the flood", n-stepDowns0)
	}
	if conn1 := cl.WaitConnected(0, "", 5*time.Second); conn1.Epoch != conn0.Epoch || conn1.Node != conn0.Node {
		t.Errorf("the shard moved during the flood: %+v, then %+v", conn0, conn1)
	}
}

// metricValue is the value of the sample named exactly series (name and
// labels) in a Prometheus text exposition, or 0.
func metricValue(exposition, series string) float64 {
	for _, line := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return n
		}
	}
	return 0
}

// stepDowns reads multiconnect_coreapp_step_downs_total from the coreapp at addr.
func stepDowns(t *testing.T, cl *clustertest.Cluster, addr string) float64 {
	t.Helper()
	code, body, err := cl.Internal("GET", addr, "/metrics", "")
	if err != nil || code != http.StatusOK {
		t.Fatalf("coreapp metrics: %d %v", code, err)
	}
	if !strings.Contains(string(body), "\nmulticonnect_coreapp_step_downs_total ") {
		t.Fatalf("no multiconnect_coreapp_step_downs_total in the coreapp's metrics")
	}
	return metricValue(string(body), "multiconnect_coreapp_step_downs_total")
}
