package clustertest

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dbProxyEnv points a node at MariaDB through p instead of directly.
func dbProxyEnv(p *Proxy) []string {
	return []string{"WA_DB_HOSTNAME=127.0.0.1", "WA_DB_PORT=" + strconv.Itoa(p.Port())}
}

// promotedTo lists the coreapps the masters promoted for shard, oldest first.
func (c *Cluster) promotedTo(shard int) []string {
	c.T.Helper()
	rows, err := c.SQL.Query(`SELECT new_node FROM failovers WHERE shard_id = ? ORDER BY epoch`, shard)
	if err != nil {
		c.T.Fatalf("read failovers: %v", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			c.T.Fatalf("read failovers: %v", err)
		}
		out = append(out, n)
	}
	return out
}

// requireNeverPromoted fails the test if shard was ever handed to node.
func (c *Cluster) requireNeverPromoted(shard int, node, why string) {
	c.T.Helper()
	for _, n := range c.promotedTo(shard) {
		if n == node {
			c.T.Fatalf("shard %d was promoted to %s, which %s", shard, node, why)
		}
	}
}

// coreappReport is what a coreapp says about itself on its internal port.
type coreappReport struct {
	Primary   bool  `json:"primary"`
	Shard     int   `json:"shard"`
	Connected bool  `json:"connected"`
	DBAgeMS   int64 `json:"db_age_ms"`
}

func (c *Cluster) coreappHealth(addr string) (coreappReport, error) {
	var r coreappReport
	code, b, err := c.Internal("GET", addr, "/internal/health", "")
	if err != nil {
		return r, err
	}
	if code != 200 {
		return r, fmt.Errorf("health of %s: HTTP %d: %s", addr, code, b)
	}
	return r, json.Unmarshal(b, &r)
}

// waitNoDB waits until the coreapp at addr reports its last database
// success older than unhealthy_interval (or none), which a candidate may
// not have.
func (c *Cluster) waitNoDB(addr string) {
	c.T.Helper()
	c.Eventually(10*time.Second, addr+" reports MySQL unreachable", func() error {
		r, err := c.coreappHealth(addr)
		if err != nil {
			return err
		}
		if r.DBAgeMS >= 0 && time.Duration(r.DBAgeMS)*time.Millisecond <= seconds(c.Opts.Unhealthy) {
			return fmt.Errorf("last database success %d ms ago", r.DBAgeMS)
		}
		return nil
	})
}

// waitRegistered waits until the coreapp at addr is in the nodes table.
func (c *Cluster) waitRegistered(addr string) {
	c.T.Helper()
	c.Eventually(15*time.Second, addr+" registered", func() error {
		var n int
		if err := c.SQL.QueryRow(`SELECT COUNT(*) FROM nodes WHERE id = ? AND role = 'coreapp'`, addr).Scan(&n); err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("not in nodes")
		}
		_, err := c.coreappHealth(addr)
		return err
	})
}

// netCutBound is the README's bound ("The failure model", Detection) for a
// primary cut from the network to be replaced: the plugin notices the
// network's silence within 1.75 x keepalive, the holder reports it at its
// next renewal tick and the master at its next heartbeat (2 x heartbeat),
// the master waits unhealthy_interval, asks the holder to step down (up to
// unhealthy/2 while the holder is inside a connect attempt), and the
// successor waits one keepalive before it connects; 1 s covers the
// database round trips and the connect itself.
func netCutBound(o Options) time.Duration {
	hb, unhealthy := seconds(o.Heartbeat), seconds(o.Unhealthy)
	return o.Keepalive*7/4 + 2*hb + unhealthy + unhealthy/2 + o.Keepalive + time.Second
}

// Scenario 4 of issue 12: a primary whose plugin can no longer reach the
// network (a black-holed path; heartbeats and MySQL stay up) is replaced
// within netCutBound, by a spare that reaches MySQL, never by one that
// cannot; the old holder steps down; the shard never has two connections.
func TestPrimaryCutFromNetworkIsReplaced(t *testing.T) {
	var netProxy *Proxy
	c := New(t, Options{Coreapps: 1, CoreappEnv: func(c *Cluster, i int) []string {
		netProxy = StartProxy(t, c.SimnetTCP)
		return []string{"SIMNET_ADDR=" + netProxy.Addr()}
	}})
	a := c.Coreapps[0]
	if iv := c.WaitConnected(0, "", 10*time.Second); iv.Node != a.Addr {
		t.Fatalf("shard 0 held by %s, want the first coreapp %s", iv.Node, a.Addr)
	}
	good := c.StartCoreapp()
	dbProxy := StartProxy(t, c.DB.Addr())
	noDB := c.StartCoreapp(dbProxyEnv(dbProxy)...)
	c.waitRegistered(good.Addr)
	c.waitRegistered(noDB.Addr)
	dbProxy.Cut()
	c.waitNoDB(noDB.Addr)

	bound := netCutBound(c.Opts)
	netProxy.Cut()
	cut := time.Now()
	iv := c.WaitConnected(0, a.Addr, bound+5*time.Second)
	took := time.Since(cut)
	t.Logf("primary cut from the network: shard 0 connected by %s %v after the cut (bound %v)", iv.Node, took, bound)
	if took > bound {
		t.Errorf("shard 0 reconnected %v after the cut, over the bound %v", took, bound)
	}
	if iv.Node != good.Addr {
		t.Errorf("shard 0 now held by %s, want the spare that reaches MySQL %s", iv.Node, good.Addr)
	}
	c.requireNeverPromoted(0, noDB.Addr, "cannot reach MySQL")
	c.Eventually(5*time.Second, "the cut-off holder stepped down", func() error {
		r, err := c.coreappHealth(a.Addr)
		if err != nil {
			return err
		}
		if r.Primary {
			return fmt.Errorf("%s still says it is primary of shard %d", a.Addr, r.Shard)
		}
		return nil
	})
	// It stepped down because the master asked it to release the claim
	// (not because the claim ran out), and handed the claim back.
	if log := a.Log(); !strings.Contains(log, "the master found this coreapp not connected to the network") {
		t.Errorf("the cut-off holder did not step down on the master's release request")
	}
	c.RequireNoViolations()

	// The cut-off coreapp is a spare again, answering heartbeats and
	// reaching MySQL, but its path to the network is still cut: when the
	// new holder dies and another healthy spare exists, that one is chosen.
	spare := c.StartCoreapp()
	c.waitRegistered(spare.Addr)
	time.Sleep(2 * seconds(c.Opts.Heartbeat)) // heartbeated by the masters
	good.Kill()
	next := c.WaitConnected(0, good.Addr, 10*time.Second)
	if next.Node != spare.Addr {
		t.Errorf("after the second failover shard 0 is held by %s, want the healthy spare %s (not the cut-off %s)", next.Node, spare.Addr, a.Addr)
	}
	c.requireNeverPromoted(0, noDB.Addr, "cannot reach MySQL")
	if ps := c.promotedTo(0); len(ps) != 3 || ps[2] != spare.Addr {
		t.Errorf("promotions of shard 0: %v, want the first holder, %s, then %s", ps, good.Addr, spare.Addr)
	}
	c.RequireNoViolations()

	// The release route refuses bad input with the original's error shape,
	// and a release for a claim the coreapp does not hold changes nothing.
	for _, body := range []string{`{}`, `{"shard":0}`, `not json`} {
		code, b, err := c.Internal("POST", spare.Addr, "/internal/release", body)
		if err != nil || code != 400 || errorCode(b) != 1025 {
			t.Errorf("release %s: HTTP %d %s %v, want 400 with code 1025", body, code, b, err)
		}
	}
	code, b, err := c.Internal("POST", spare.Addr, "/internal/release", fmt.Sprintf(`{"shard":0,"epoch":%d}`, next.Epoch+7))
	if err != nil || code != 200 || !strings.Contains(string(b), `"released":false`) {
		t.Errorf("release of an epoch not held: HTTP %d %s %v, want 200 released false", code, b, err)
	}
	if r, err := c.coreappHealth(spare.Addr); err != nil || !r.Primary {
		t.Errorf("the holder gave up its claim on a release for another epoch: %+v %v", r, err)
	}
}

// Scenario 4 of issue 12, the candidate half: when the primary dies and the
// only spare cannot reach MySQL, the masters do not hand it the shard (it
// could not take it, and the shard would wait on it); once its path to
// MySQL heals it is promoted.
func TestSpareWithoutDatabaseIsNeverChosen(t *testing.T) {
	c := New(t, Options{Coreapps: 1})
	a := c.Coreapps[0]
	c.WaitConnected(0, "", 10*time.Second)
	dbProxy := StartProxy(t, c.DB.Addr())
	noDB := c.StartCoreapp(dbProxyEnv(dbProxy)...)
	c.waitRegistered(noDB.Addr)
	dbProxy.Cut()
	c.waitNoDB(noDB.Addr)

	a.Kill()
	// Heartbeats of a dead primary go unanswered for unhealthy_interval;
	// watch well past that for a promotion of the spare.
	watch := time.Now().Add(3*seconds(c.Opts.Unhealthy) + 2*time.Second)
	for time.Now().Before(watch) {
		c.requireNeverPromoted(0, noDB.Addr, "cannot reach MySQL")
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("no promotion of the spare without MySQL in %v after the primary died", 3*seconds(c.Opts.Unhealthy)+2*time.Second)

	dbProxy.Heal()
	healed := time.Now()
	iv := c.WaitConnected(0, a.Addr, 15*time.Second)
	t.Logf("spare's path to MySQL healed: shard 0 connected by %s %v later", iv.Node, time.Since(healed))
	if iv.Node != noDB.Addr {
		t.Errorf("shard 0 held by %s, want %s", iv.Node, noDB.Addr)
	}
	c.RequireNoViolations()
}
