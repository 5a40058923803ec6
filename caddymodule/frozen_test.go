package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/clustertest"
)

// TestFrozenPrimaryAnsweredWithinResponseTimeout freezes (SIGSTOP) the
// primary coreapp of the only shard under load from clients that resend
// with their idempotency key until they get a 201. Every attempt must be
// answered within response_timeout + retry_wait + slack (a request in
// flight to the frozen node gets 502 with 1000, "may have been applied"),
// and every accepted message must reach the network once, in order.
func TestFrozenPrimaryAnsweredWithinResponseTimeout(t *testing.T) {
	const (
		responseTimeout = 2 * time.Second
		retryWait       = time.Second
		freeze          = 6 * time.Second
		clients         = 12
	)
	bound := responseTimeout + retryWait + 1500*time.Millisecond
	cl, g := startWithRealNodes(t, clustertest.Options{Masters: 1, Coreapps: 2, Shards: 1}, fmt.Sprintf("response_timeout %s\n\t\tretry_wait %s", responseTimeout, retryWait))
	token := g.loginAdmin()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}

	type attempt struct {
		took   time.Duration
		status int
		code   int
		at     time.Time
	}
	var (
		mu       sync.Mutex
		attempts []attempt
	)
	tos := make([]string, clients)
	accepted := make([][]string, clients)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range clients {
		tos[i] = fmt.Sprintf("1555010%04d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				key := fmt.Sprintf("c%d-m%d", i, n)
				body := fmt.Sprintf(`{"to":%q,"type":"text","text":{"body":"m%d"}}`, tos[i], n)
				// Resend with the key until accepted (also after stop, so
				// no message is left "maybe applied").
				for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
					req, _ := http.NewRequest("POST", g.url+"/v1/messages", strings.NewReader(body))
					req.Header.Set("Authorization", "Bearer "+token)
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("X-Idempotency-Key", key)
					start := time.Now()
					st, raw := 0, ""
					if resp, err := client.Do(req); err == nil {
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						st, raw = resp.StatusCode, string(b)
					}
					a := attempt{took: time.Since(start), status: st, code: errCode(raw), at: start}
					mu.Lock()
					attempts = append(attempts, a)
					mu.Unlock()
					if st == http.StatusCreated {
						accepted[i] = append(accepted[i], messageID(raw))
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}

	time.Sleep(1500 * time.Millisecond)
	conn := cl.WaitConnected(0, "", 5*time.Second)
	victim := cl.CoreappByAddr(conn.Node)
	victim.Signal(syscall.SIGSTOP)
	frozeAt := time.Now()
	time.Sleep(freeze)
	victim.Signal(syscall.SIGCONT)
	t.Logf("primary %s frozen for %s", victim.Addr, freeze)
	time.Sleep(2 * time.Second)
	stop()
	wg.Wait()

	var slow []attempt
	byStatus := map[string]int{}
	var maxTook time.Duration
	for _, a := range attempts {
		byStatus[fmt.Sprintf("%d/%d", a.status, a.code)]++
		if a.took > maxTook {
			maxTook = a.took
		}
		if a.took > bound {
			slow = append(slow, a)
		}
	}
	t.Logf("%d attempts, answers (HTTP/code) %v, slowest %s (bound %s)", len(attempts), byStatus, maxTook.Round(time.Millisecond), bound)
	sort.Slice(slow, func(i, j int) bool { return slow[i].took > slow[j].took })
	for i, a := range slow {
		if i == 5 {
			break
		}
		t.Errorf("an attempt sent %s after the freeze took %s (HTTP %d, code %d), over the bound %s",
			a.at.Sub(frozeAt).Round(time.Millisecond), a.took.Round(time.Millisecond), a.status, a.code, bound)
	}
	if byStatus[fmt.Sprintf("%d/%d", http.StatusBadGateway, apierror.GenericError)] == 0 {
		t.Errorf("no request in flight to the frozen primary was answered 502 with %d", apierror.GenericError)
	}
	for i := range tos {
		if len(accepted[i]) == 0 {
			t.Fatalf("client %d had nothing accepted", i)
		}
	}
	cl.RequireInOrderOnce(tos, accepted)
}
