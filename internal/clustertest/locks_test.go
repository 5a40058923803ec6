package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
)

// masterLease reads the lease row: who holds it at which epoch.
func (c *Cluster) masterLease() (holder string, epoch int64) {
	c.T.Helper()
	if err := c.SQL.QueryRow(`SELECT holder, epoch FROM master_lease WHERE id = 1`).Scan(&holder, &epoch); err != nil {
		c.T.Fatalf("read master_lease: %v", err)
	}
	return holder, epoch
}

// waitReplaced polls the network until shard has an open connection from
// another node than was's at a higher epoch, for at most d. Unlike
// WaitConnected it does not end the test, so a slow failover is measured.
func (c *Cluster) waitReplaced(shard int, was Interval, d time.Duration) (Interval, bool) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if iv, ok := c.OpenConnection(shard); ok && iv.Node != was.Node && iv.Epoch > was.Epoch && iv.Start > was.Start {
			return iv, true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return Interval{}, false
}

// idleTransactions counts transactions holding locks on the server whose
// client has sent nothing for at least d (MariaDB's TIME_MS): what a frozen
// coreapp leaves behind.
func (c *Cluster) idleTransactions(d time.Duration) int {
	var n int
	err := c.SQL.QueryRow(`SELECT COUNT(*) FROM information_schema.INNODB_TRX t
		JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
		WHERE t.trx_query IS NULL AND t.trx_lock_structs > 0 AND p.COMMAND = 'Sleep' AND p.TIME_MS >= ?`,
		d.Milliseconds()).Scan(&n)
	if err != nil {
		c.T.Logf("count idle transactions: %v", err)
	}
	return n
}

// Scenario 2 of issue 12: a primary coreapp frozen, plugin included (a VM
// stall), while 40 clients keep its shard busy, is often frozen inside an
// accept or callback transaction, holding shared locks on its shard_map row
// and the cluster row. Promotion needs those rows for update. Each of 20
// freezes longer than unhealthy_interval must still end with a new primary
// connected within unhealthy + keepalive + 1 s, and the primary master must
// keep its lease throughout (its renewal must never queue behind a lock a
// frozen coreapp holds).
func TestFrozenPrimaryInsideTransaction(t *testing.T) {
	c := New(t, Options{Coreapps: 3})
	const freezes = 20
	freeze := 2500 * time.Millisecond // > unhealthy_interval (1 s) and > the master lease (2 s)
	bound := seconds(c.Opts.Unhealthy) + c.Opts.Keepalive + time.Second
	tos := recipients(c, 40)
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	snd := startSenders(ctx, c, tos, 0, 0)
	holder0, epoch0 := c.masterLease()

	var took []time.Duration
	late, heldTx := 0, 0
	for i := 0; i < freezes; i++ {
		before := snd.total.Load()
		c.Eventually(10*time.Second, "traffic flowing on shard 0", func() error {
			if snd.total.Load() < before+40 {
				return fmt.Errorf("%d accepted since the last freeze", snd.total.Load()-before)
			}
			return nil
		})
		cur := c.WaitConnected(0, "", 10*time.Second) // the primary now, whatever happened meanwhile
		victim := c.CoreappByAddr(cur.Node)
		kids := victim.Children()
		at := time.Now()
		victim.Signal(syscall.SIGSTOP)
		for _, k := range kids {
			syscall.Kill(k, syscall.SIGSTOP)
		}
		thawed := make(chan struct{})
		time.AfterFunc(freeze, func() {
			for _, k := range kids {
				syscall.Kill(k, syscall.SIGCONT)
			}
			victim.Signal(syscall.SIGCONT)
			close(thawed)
		})
		time.Sleep(500 * time.Millisecond)
		idle := c.idleTransactions(400 * time.Millisecond)
		if idle > 0 {
			heldTx++
		}
		next, ok := c.waitReplaced(0, cur, freeze+3*time.Second)
		seen := time.Since(at) // monotonic: an upper bound on the gap
		// The gap as the network timestamped the new connection, unless the
		// host's wall clock stepped meanwhile (a VM pause), which the
		// network's monotonic timestamps do not follow.
		d := time.Duration(next.Start - at.UnixNano())
		if d < 0 || d > seen {
			t.Logf("freeze %d: the wall clock stepped (network gap %v, observed within %v); using the observed", i+1, d, seen)
			d = seen
		}
		if !ok {
			d = -1
		}
		took = append(took, d)
		t.Logf("freeze %2d of %s (idle transactions on the server after 0.5 s: %d): new primary %s connected after %v",
			i+1, cur.Node, idle, next.Node, d.Round(time.Millisecond))
		if !ok || d > bound {
			late++
		}
		<-thawed
		time.Sleep(200 * time.Millisecond) // a third coreapp is always a spare meanwhile
	}
	snd.wait(t, true)

	killed := 0
	for _, m := range c.Masters {
		killed += strings.Count(m.Log(), "ended a stalled transaction")
	}
	t.Logf("per-freeze time to a new primary's connection (bound %v): %v; %d of %d freezes left a transaction open; the masters ended %d stalled transactions",
		bound, took, heldTx, freezes, killed)
	if late > 0 {
		t.Errorf("%d of %d freezes: no new primary connected within %v (unhealthy + keepalive + 1 s)", late, freezes, bound)
	}
	if holder, epoch := c.masterLease(); holder != holder0 || epoch != epoch0 {
		t.Errorf("the master lease changed hands: %s epoch %d -> %s epoch %d", holder0, epoch0, holder, epoch)
	}
	// What costs the lease: a renewal queued behind a lock the frozen node
	// holds. None may have failed.
	for _, m := range c.Masters {
		if n, _ := c.metricIfAny(m.Addr, "multiconnect_db_errors_total", map[string]string{"op": "renew lease"}); n != 0 {
			t.Errorf("master %s: %v lease renewals failed", m.Addr, n)
		}
	}
	c.RequireInOrderOnce(tos, snd.accepted)
	c.RequireNoViolations()
}

// uploadMedia stores a small image through coreapp addr and returns its id.
func (c *Cluster) uploadMedia(addr string) string {
	c.T.Helper()
	req, err := http.NewRequest("POST", "http://"+addr+"/v1/media", strings.NewReader("\x89PNG\r\n\x1a\nnot really a picture"))
	if err != nil {
		c.T.Fatal(err)
	}
	req.Header.Set(cluster.SecretHeader, c.Secret)
	req.Header.Set("Content-Type", "image/png")
	resp, err := c.http.Do(req)
	if err != nil {
		c.T.Fatalf("upload media: %v", err)
	}
	defer resp.Body.Close()
	var out struct {
		Media []struct{ ID string } `json:"media"`
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 201 || json.Unmarshal(b, &out) != nil || len(out.Media) != 1 {
		c.T.Fatalf("upload media: HTTP %d %s", resp.StatusCode, b)
	}
	return out.Media[0].ID
}

// Scenario 5 of issue 12: with every database round trip 50 ms slower and
// 500 clients sending messages that name an uploaded media by id (each one
// a media lookup in MySQL before its group commit), the primary's claim
// renewals must still get through: no step-down, no failover, the shard's
// connection never changes. Requests beyond what the coreapp lets at the
// database at once wait briefly or are answered 503 (the original's shape).
func TestRenewalsUnderRequestLoad(t *testing.T) {
	c := New(t, Options{Coreapps: 2, DBLatency: 50 * time.Millisecond})
	conn := c.WaitConnected(0, "", 10*time.Second)
	media := c.uploadMedia(conn.Node)
	const clients = 500
	load := 20 * time.Second
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	var mu sync.Mutex
	codes := map[int]int{}
	var busyBody []byte // one 429 answer, to check its shape
	var busyRetry string
	var wg sync.WaitGroup
	stop := time.Now().Add(load)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			to := strconv.Itoa(15550200000 + i)
			for j := 0; time.Now().Before(stop); j++ {
				body := fmt.Sprintf(`{"to":%q,"type":"image","image":{"id":%q,"caption":"%d"}}`, to, media, j)
				req, _ := http.NewRequest("POST", "http://"+conn.Node+"/v1/messages", strings.NewReader(body))
				req.Header.Set(cluster.SecretHeader, c.Secret)
				req.Header.Set("Content-Type", "application/json")
				code := 0 // transport error
				var b []byte
				var retry string
				if resp, err := client.Do(req); err == nil {
					b, _ = io.ReadAll(resp.Body)
					resp.Body.Close()
					code, retry = resp.StatusCode, resp.Header.Get("Retry-After")
				}
				mu.Lock()
				codes[code]++
				if code == 429 && busyBody == nil {
					busyBody, busyRetry = b, retry
				}
				mu.Unlock()
				if code != 201 {
					time.Sleep(100 * time.Millisecond)
				}
			}
		}(i)
	}
	wg.Wait()
	t.Logf("%d clients for %v through +%v per round trip: answers by HTTP status %v (%.0f accepted/s)",
		clients, load, c.Opts.DBLatency, codes, float64(codes[201])/load.Seconds())
	if codes[201] == 0 {
		t.Fatal("no message was accepted: the load measured nothing")
	}
	for code, n := range codes {
		if code != 201 && code != 503 && code != 429 {
			t.Errorf("%d answers with HTTP %d (want 201, or 503/429 when saturated)", n, code)
		}
	}
	if busyBody != nil && (errorCode(busyBody) != 1015 || busyRetry == "") {
		t.Errorf("a saturated coreapp answered 429 %s with Retry-After %q; want code 1015 and a Retry-After", busyBody, busyRetry)
	}
	for _, p := range c.Coreapps {
		if n := c.metric(p.Addr, "multiconnect_coreapp_step_downs_total", nil); n != 0 {
			t.Errorf("%s stepped down %v times under request load", p.Addr, n)
		}
	}
	var failovers int
	if err := c.SQL.QueryRow(`SELECT COUNT(*) FROM failovers WHERE reason <> 'unassigned'`).Scan(&failovers); err != nil {
		t.Fatal(err)
	}
	if failovers != 0 {
		t.Errorf("%d failovers under request load", failovers)
	}
	// The same holder at the same epoch. (Its plugin may have reconnected
	// at that epoch if the machine starved it past the network's
	// keepalive: that is not a step-down.)
	if cur, ok := c.OpenConnection(0); !ok || cur.Node != conn.Node || cur.Epoch != conn.Epoch {
		t.Errorf("shard 0 changed hands under request load: was %s epoch %d, now %+v (open %v)", conn.Node, conn.Epoch, cur, ok)
	} else if cur.ID != conn.ID {
		t.Logf("the holder's plugin reconnected at the same epoch (connection %d -> %d)", conn.ID, cur.ID)
	}
	c.RequireNoViolations()
}
