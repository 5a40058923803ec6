package clustertest

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A network outage that every holder sees at once (the simulated network
// frozen with SIGSTOP for longer than unhealthy_interval) replaces no
// holder: a successor could not connect either. The master shows the
// holders off the network while it lasts, logs the outage, and every
// holder reconnects at its own epoch once the network is back
// (README, "Detection").
func TestNetworkOutageReplacesNoHolder(t *testing.T) {
	o := Options{Masters: 2, Coreapps: 6, Shards: 4, Heartbeat: 0.1, Unhealthy: 0.5, Keepalive: 100 * time.Millisecond}
	c := New(t, o)
	before := c.WaitAllShardsConnected(30 * time.Second)
	var lastFailover int64
	if err := c.SQL.QueryRow(`SELECT COALESCE(MAX(id), 0) FROM failovers`).Scan(&lastFailover); err != nil {
		t.Fatal(err)
	}
	master, err := c.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}

	// Frozen for 0.9 s: the plugins count the connection lost after
	// 1.5 x keepalive, so each holder is off for about 0.75 s plus its
	// reconnection: past unhealthy_interval (0.5 s), short of it plus the
	// outage grace (5 s more).
	c.Simnet.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { c.Simnet.Signal(syscall.SIGCONT) })
	frozen := time.Now()
	maxOff := 0.0
	for time.Since(frozen) < 900*time.Millisecond {
		maxOff = max(maxOff, c.metric(master, "multiconnect_master_holders_off_network", nil))
		time.Sleep(50 * time.Millisecond)
	}
	c.Simnet.Signal(syscall.SIGCONT)
	if maxOff < 2 {
		t.Errorf("multiconnect_master_holders_off_network reached %v during the outage, want at least 2 of 4", maxOff)
	}

	c.Eventually(10*time.Second, "every shard reconnected by its holder", func() error {
		for s, iv := range before {
			now, ok := c.OpenConnection(s)
			if !ok {
				return fmt.Errorf("shard %d has no connection", s)
			}
			if now.Node != iv.Node {
				return fmt.Errorf("shard %d is held by %s, was %s", s, now.Node, iv.Node)
			}
		}
		return nil
	})
	// A promotion decided late would show up by now.
	time.Sleep(2 * time.Second)
	rows, err := c.SQL.Query(`SELECT shard_id, COALESCE(old_node, ''), new_node, reason FROM failovers WHERE id > ? ORDER BY id`, lastFailover)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var shard int
		var old, nw, reason string
		if err := rows.Scan(&shard, &old, &nw, &reason); err != nil {
			t.Fatal(err)
		}
		t.Errorf("shard %d promoted %s -> %s during a network-wide outage: %s", shard, old, nw, reason)
	}
	c.Eventually(5*time.Second, "no holder off the network", func() error {
		if v := c.metric(master, "multiconnect_master_holders_off_network", nil); v != 0 {
			return fmt.Errorf("multiconnect_master_holders_off_network %v", v)
		}
		return nil
	})
	var log string
	for _, m := range c.Masters {
		if m.Addr == master {
			log = m.Log()
		}
	}
	if !strings.Contains(log, "most primary coreapps are off the network at once") || !strings.Contains(log, "the network outage is over") {
		t.Errorf("the primary master logged no start and end of the outage")
	}
	c.RequireNoViolations()
}
