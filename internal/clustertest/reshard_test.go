package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The shard count changes online, 1 -> 2 -> 4 -> 2, while clients keep
// sending to many recipients. Every accepted message must reach the network
// exactly once and, per recipient, in acceptance order; no shard may ever
// be connected twice; and each step must end with every shard served.
func TestReshardingUnderTraffic(t *testing.T) {
	// A keepalive long enough that freezing a plugin (below) for under a
	// second does not cost its connection.
	c := New(t, Options{Shards: 1, Coreapps: 5, Keepalive: 2 * time.Second})
	tos := make([]string, 40)
	for i := range tos {
		tos[i] = fmt.Sprintf("1555%07d", 2000+i*7919)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	// Bad requests change nothing.
	primary, _ := c.PrimaryMasterAddr()
	for body, want := range map[string]int{`{"shards":3}`: 1009, `{"shards":8}`: 1009, `{}`: 1008, `[`: 1025} {
		code, out, _ := c.Internal("POST", primary, "/v1/account/shards", body)
		if code != 400 || errorCode(out) != want {
			t.Errorf("POST shards %s: %d %s, want 400 with %d", body, code, out, want)
		}
		if body == `{"shards":8}` && !strings.Contains(string(out), "healthy coreapps") {
			t.Errorf("8 shards on 5 coreapps: %s, want a clear reason", out)
		}
	}
	if n := c.shardCount(); n != 1 {
		t.Fatalf("refused requests changed the shard count to %d", n)
	}

	snd := startSenders(ctx, c, tos, 0, 20*time.Millisecond)

	steady := func(what string) {
		before := snd.total.Load()
		time.Sleep(1500 * time.Millisecond)
		if snd.total.Load() == before {
			t.Fatalf("no message accepted for 1.5 s %s", what)
		}
	}
	steady("before re-sharding")
	for _, n := range []int{2, 4, 2} {
		from := c.shardCount()
		// Freeze the serving plugins around the change, so it meets a
		// backlog of accepted, unsent messages and a batch in flight.
		var frozen []int
		for s := 0; s < from; s++ {
			if addr, err := c.ShardPrimary(s); err == nil {
				frozen = append(frozen, c.CoreappByAddr(addr).Children()...)
			}
		}
		for _, pid := range frozen {
			syscall.Kill(pid, syscall.SIGSTOP)
		}
		time.Sleep(300 * time.Millisecond)
		var backlog int
		c.SQL.QueryRow(`SELECT COUNT(*) FROM messages WHERE state = 0`).Scan(&backlog)
		started := time.Now()
		code, out, err := c.Internal("POST", primary, "/v1/account/shards", fmt.Sprintf(`{"shards":%d}`, n))
		time.Sleep(300 * time.Millisecond)
		for _, pid := range frozen {
			syscall.Kill(pid, syscall.SIGCONT)
		}
		if err != nil || code != 201 {
			t.Fatalf("POST shards %d: %d %s %v", n, code, out, err)
		}
		if backlog == 0 {
			t.Errorf("no unsent messages when the count changed to %d: the change met no backlog", n)
		}
		c.Eventually(20*time.Second, fmt.Sprintf("all %d shards connected", n), func() error {
			open := 0
			for s := 0; s < n; s++ {
				if _, ok := c.OpenConnection(s); ok {
					open++
				}
			}
			for s := n; s < 4; s++ {
				if _, ok := c.OpenConnection(s); ok {
					return fmt.Errorf("removed shard %d still connected", s)
				}
			}
			if open != n {
				return fmt.Errorf("%d of %d shards connected", open, n)
			}
			return nil
		})
		t.Logf("%d -> %d shards with %d messages unsent: every shard connected %v after the request, %d messages accepted so far",
			from, n, backlog, time.Since(started).Round(time.Millisecond), snd.total.Load())
		steady(fmt.Sprintf("after re-sharding to %d", n))
	}
	snd.wait(t, true)
	c.RequireInOrderOnce(tos, snd.accepted)
	shardsUsed := map[int]bool{}
	for _, m := range c.NetworkMessages("") {
		shardsUsed[m.Shard] = true
	}
	if len(shardsUsed) != 4 {
		t.Errorf("messages went out over shards %v, want all of 0-3", shardsUsed)
	}
	c.RequireNoViolations()

	code, out, _ := c.Internal("GET", primary, "/v1/account/shards", "")
	var got struct {
		Account []struct{ Shards int } `json:"account"`
	}
	if code != 200 || json.Unmarshal(out, &got) != nil || len(got.Account) != 1 || got.Account[0].Shards != 2 {
		t.Errorf("GET shards: %d %s, want 2", code, out)
	}
}

func (c *Cluster) shardCount() int {
	c.T.Helper()
	var n int
	if err := c.SQL.QueryRow(`SELECT shards FROM cluster WHERE id = 1`).Scan(&n); err != nil {
		c.T.Fatal(err)
	}
	return n
}
