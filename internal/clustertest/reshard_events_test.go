package clustertest

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/shard"
)

// shardUnder is to's shard under n shards.
func shardUnder(t *testing.T, to string, n int) int {
	t.Helper()
	s, err := shard.For(to, n)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// injectOne has the network take an inbound message from "to" for
// shard s; its id doubles as its text.
func injectOne(t *testing.T, c *Cluster, s int, to, id string) {
	t.Helper()
	if err := c.SimnetPost("/v1/inbound", map[string]any{"shard": s, "id": id, "recipient": to,
		"payload": map[string]any{"type": "text", "text": map[string]string{"body": id}}}); err != nil {
		t.Fatal(err)
	}
}

// networkHeld is how many events the network keeps unacknowledged for
// shard s (pushed or not).
func networkHeld(t *testing.T, c *Cluster, s int) int {
	t.Helper()
	n, err := pendingEvents(c, s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// sendEach sends one message ("m<j>") to each of tos, in turn, recording
// the ids in sent.
func sendEach(ctx context.Context, t *testing.T, c *Cluster, tos []string, j int, sent map[string][]string) {
	t.Helper()
	for _, to := range tos {
		id, err := sendUntilAccepted(ctx, c, to, fmt.Sprintf(`{"to":%q,"text":{"body":"m%d"}}`, to, j), fmt.Sprintf("%s-%d", to, j))
		if err != nil {
			t.Fatal(err)
		}
		sent[to] = append(sent[to], id)
	}
}

// Shrinking 4 -> 2 while the network holds events for shards 2 and 3
// (their plugins frozen, so what the network has for them is pending or
// pushed and unacknowledged): every callback still reaches the webhook,
// within 15 s, in order per recipient, those written after the change
// included. Before the network learned the shard count, the events of a
// removed shard stayed with it until that shard id existed again.
func TestHeldEventsFollowAShrink(t *testing.T) {
	c := New(t, Options{Shards: 4, Coreapps: 5})
	hook := startHook(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q,"max_concurrent_requests":6,"message":{"sent":true,"delivered":true,"read":true}},
		"callback_backoff_delay_ms":100,"max_callback_backoff_delay_ms":300}`, hook.url))
	time.Sleep(600 * time.Millisecond)

	tos := recipients(c, 16)
	sent := map[string][]string{}
	inbound := map[string][]string{}
	var removed []string // recipients of shards 2 and 3
	for j, to := range tos {
		id, err := sendUntilAccepted(ctx, c, to, fmt.Sprintf(`{"to":%q,"text":{"body":"m0"}}`, to), fmt.Sprintf("%s-0-%d", to, j))
		if err != nil {
			t.Fatal(err)
		}
		sent[to] = append(sent[to], id)
		if c.ShardOf(to) >= 2 {
			removed = append(removed, to)
		}
	}
	// Freeze shards 2 and 3's plugins the moment the network has their
	// messages, so some statuses come while they are frozen; inbound
	// messages for them surely do.
	c.Eventually(10*time.Second, "the first messages at the network", func() error {
		for _, to := range removed {
			if len(c.NetworkMessages(to)) == 0 {
				return fmt.Errorf("nothing for %s yet", to)
			}
		}
		return nil
	})
	var frozen []int
	for s := 2; s < 4; s++ {
		addr, err := c.ShardPrimary(s)
		if err != nil {
			t.Fatal(err)
		}
		frozen = append(frozen, c.CoreappByAddr(addr).Children()...)
	}
	for _, pid := range frozen {
		syscall.Kill(pid, syscall.SIGSTOP)
	}
	thawed := false
	defer func() {
		if !thawed {
			for _, pid := range frozen {
				syscall.Kill(pid, syscall.SIGCONT)
			}
		}
	}()
	for j := 0; j < 3; j++ {
		for _, to := range removed {
			id := fmt.Sprintf("in-%s-%d", to, j)
			injectOne(t, c, c.ShardOf(to), to, id)
			inbound[to] = append(inbound[to], id)
		}
	}
	time.Sleep(300 * time.Millisecond)
	held := networkHeld(t, c, 2) + networkHeld(t, c, 3)
	if held < 3*len(removed) {
		t.Fatalf("the network holds %d events for shards 2 and 3, want at least the %d inbound ones: the test would prove nothing", held, 3*len(removed))
	}

	primary, err := c.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	if code, out, err := c.Internal("POST", primary, "/v1/account/shards", `{"shards":2}`); err != nil || code != 201 {
		t.Fatalf("POST shards 2: %d %s %v", code, out, err)
	}
	changed := time.Now()
	// The frozen plugins die; their coreapps start new ones, which hold
	// no shard now.
	for _, pid := range frozen {
		syscall.Kill(pid, syscall.SIGKILL)
		syscall.Kill(pid, syscall.SIGCONT)
	}
	thawed = true
	// Written after the change: must follow the held ones.
	for _, to := range removed {
		id := fmt.Sprintf("in-%s-after", to)
		injectOne(t, c, c.ShardOf(to), to, id)
		inbound[to] = append(inbound[to], id)
		mid, err := sendUntilAccepted(ctx, c, to, fmt.Sprintf(`{"to":%q,"text":{"body":"m1"}}`, to), to+"-after")
		if err != nil {
			t.Fatal(err)
		}
		sent[to] = append(sent[to], mid)
	}
	c.Eventually(15*time.Second, "every callback delivered within 15 s of the change", func() error {
		return hook.missing(tos, sent, inbound)
	})
	t.Logf("the network held %d events for shards 2 and 3 at the change (%d recipients); all callbacks at the webhook %v after it",
		held, len(removed), time.Since(changed).Round(time.Millisecond))
	hook.checkOrder(t, tos, sent, inbound)
	for s := 2; s < 4; s++ {
		if n := networkHeld(t, c, s); n != 0 {
			t.Errorf("the network still holds %d events for removed shard %d", n, s)
		}
	}
	c.RequireNoViolations()
}

// Growing 2 -> 4 while the network holds an inbound message for a
// recipient that moves (shard 0 -> 2; shard 0's plugin frozen): a later
// inbound message of that recipient, which the network gives the new
// shard 2, must not reach the webhook before it. Before, the held one was
// stored on shard 0 once its plugin woke, after shard 2 had delivered the
// later one.
func TestHeldEventsKeepOrderAcrossAGrow(t *testing.T) {
	// A long unhealthy_interval keeps shard 0 with its frozen holder for
	// the few seconds the test needs.
	c := New(t, Options{Shards: 2, Coreapps: 5, Heartbeat: 0.5, Unhealthy: 8})
	hook := startHook(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q,"max_concurrent_requests":6,"message":{"sent":true,"delivered":true,"read":true}},
		"callback_backoff_delay_ms":100,"max_callback_backoff_delay_ms":300}`, hook.url))
	time.Sleep(1200 * time.Millisecond)

	var moving []string // shard 0 under 2 shards, shard 2 under 4
	for i := 0; len(moving) < 4; i++ {
		to := fmt.Sprint(15550200000 + i*7919)
		if c.ShardOf(to) == 0 && shardUnder(t, to, 4) == 2 {
			moving = append(moving, to)
		}
	}
	sent := map[string][]string{}
	inbound := map[string][]string{}
	sendEach(ctx, t, c, moving, 0, sent)
	c.Eventually(10*time.Second, "the first callbacks delivered", func() error { return hook.missing(moving, sent, nil) })

	addr, err := c.ShardPrimary(0)
	if err != nil {
		t.Fatal(err)
	}
	frozen := c.CoreappByAddr(addr).Children()
	for _, pid := range frozen {
		syscall.Kill(pid, syscall.SIGSTOP)
	}
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			for _, pid := range frozen {
				syscall.Kill(pid, syscall.SIGCONT)
			}
		}
	}
	defer thaw()
	for _, to := range moving {
		id := "in-" + to + "-held"
		injectOne(t, c, 0, to, id)
		inbound[to] = append(inbound[to], id)
	}
	time.Sleep(300 * time.Millisecond)
	if n := networkHeld(t, c, 0); n < len(moving) {
		t.Fatalf("the network holds %d events for shard 0, want at least the %d held inbound ones: the test would prove nothing", n, len(moving))
	}
	primary, err := c.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	if code, out, err := c.Internal("POST", primary, "/v1/account/shards", `{"shards":4}`); err != nil || code != 201 {
		t.Fatalf("POST shards 4: %d %s %v", code, out, err)
	}
	c.WaitConnected(2, "", 10*time.Second)
	for _, to := range moving {
		id := "in-" + to + "-later"
		injectOne(t, c, 2, to, id)
		inbound[to] = append(inbound[to], id)
	}
	// Wait for the later ones (they come whatever the order), then let
	// shard 0 go on.
	later := map[string][]string{}
	for _, to := range moving {
		later[to] = inbound[to][1:]
	}
	c.Eventually(15*time.Second, "the later inbound messages delivered", func() error { return hook.missing(moving, nil, later) })
	thaw()
	sendEach(ctx, t, c, moving, 1, sent)
	c.Eventually(20*time.Second, "every callback delivered", func() error { return hook.missing(moving, sent, inbound) })
	hook.checkOrder(t, moving, sent, inbound)
	var foreign int
	c.SQL.QueryRow(`SELECT COUNT(*) FROM callbacks WHERE shard_id = 2 AND net_seq IS NULL`).Scan(&foreign)
	t.Logf("%d held inbound messages; shard 2 stored %d callbacks without the network's number (moved by the change or stored by shard 0's coreapp for it)",
		len(moving), foreign)
	c.RequireNoViolations()
}
