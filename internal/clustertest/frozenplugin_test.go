package clustertest

import (
	"context"
	"syscall"
	"testing"
	"time"
)

// A primary coreapp whose transport plugin stops answering (SIGSTOP of the
// plugin alone: a plugin starved of CPU, swapping or stuck) keeps its claim:
// the claim renewal is a MySQL statement, and the calls to the plugin made
// between two renewals (extend, health, connect) get only what the claim
// can spare beyond half of unhealthy_interval. The frozen plugin's
// connection ends at the deadline it holds (or the network drops it), and
// the holder reconnects at its own epoch once the plugin answers again: a
// reconnection, never a promotion. Before, one extend waited up to 1 s,
// the claim (1 s) lapsed behind it and the master promoted a spare.
func TestFrozenPluginKeepsTheClaim(t *testing.T) {
	c := New(t, Options{Coreapps: 3})
	unhealthy := seconds(c.Opts.Unhealthy)
	freeze := unhealthy * 3 / 2
	var before int
	if err := c.SQL.QueryRow(`SELECT COUNT(*) FROM failovers`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	first := c.WaitConnected(0, "", 10*time.Second)
	holder := c.CoreappByAddr(first.Node)
	tos := recipients(c, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	snd := startSenders(ctx, c, tos, 0, 50*time.Millisecond)
	for i := 0; i < 3; i++ {
		time.Sleep(time.Second)
		plugins := holder.Children()
		if len(plugins) == 0 {
			t.Fatalf("%s runs no plugin", holder.Name)
		}
		for _, pid := range plugins {
			syscall.Kill(pid, syscall.SIGSTOP)
		}
		time.Sleep(freeze)
		for _, pid := range plugins {
			syscall.Kill(pid, syscall.SIGCONT)
		}
		// Connected again, by the same holder at its epoch.
		cur := c.WaitConnected(0, "", 5*time.Second)
		t.Logf("plugin of %s frozen %v (unhealthy_interval %v): shard 0 now on %s epoch %d (was epoch %d)",
			holder.Name, freeze, unhealthy, cur.Node, cur.Epoch, first.Epoch)
	}
	time.Sleep(2 * unhealthy)
	snd.wait(t, true)
	var after int
	if err := c.SQL.QueryRow(`SELECT COUNT(*) FROM failovers`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("%d promotions while only the holder's plugin was frozen", after-before)
	}
	// The renewals went on, and their histograms say so.
	for _, m := range []string{"multiconnect_coreapp_claim_renewal_seconds", "multiconnect_coreapp_claim_renewal_gap_seconds"} {
		if n := c.metric(holder.Addr, m, nil); n < float64(freeze/seconds(c.Opts.Heartbeat)) {
			t.Errorf("%s: %v renewals counted in %s", holder.Name, n, m)
		}
	}
	if n := c.metric(holder.Addr, "multiconnect_coreapp_step_downs_total", nil); n != 0 {
		t.Errorf("%s stepped down %v times while only its plugin was frozen", holder.Name, n)
	}
	if cur, ok := c.OpenConnection(0); !ok || cur.Node != first.Node || cur.Epoch != first.Epoch {
		t.Errorf("shard 0 changed hands: was %s epoch %d, now %+v (open %v)", first.Node, first.Epoch, cur, ok)
	}
	c.RequireNoViolations()
	if t.Failed() {
		t.Logf("%s log tail:\n%s", holder.Name, tailLines(holder.Log(), 40))
	}
}
