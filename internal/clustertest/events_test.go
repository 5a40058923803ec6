package clustertest

import (
	"fmt"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// injectInbound has the network push n inbound messages from each of tos,
// one client per recipient, and returns each recipient's ids in the order
// the network took them.
func injectInbound(t *testing.T, c *Cluster, tos []string, n int, prefix string) map[string][]string {
	t.Helper()
	out := make(map[string][]string, len(tos))
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, len(tos))
	for _, to := range tos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids := make([]string, 0, n)
			for j := 0; j < n; j++ {
				id := fmt.Sprintf("%s-%s-%d", prefix, to, j)
				if err := c.SimnetPost("/v1/inbound", map[string]any{"shard": c.ShardOf(to), "id": id, "recipient": to,
					"payload": map[string]any{"type": "text", "text": map[string]string{"body": id}}}); err != nil {
					errs <- err
					return
				}
				ids = append(ids, id)
			}
			mu.Lock()
			out[to] = ids
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return out
}

// requireInbound waits until the webhook took every inbound message of
// want and checks each recipient's arrived in order (first deliveries).
func requireInbound(t *testing.T, c *Cluster, hook *hookReceiver, want map[string][]string, within time.Duration) {
	t.Helper()
	total := 0
	for _, ids := range want {
		total += len(ids)
	}
	c.Eventually(within, "every inbound message at the webhook", func() error {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		got := map[string]bool{}
		for _, m := range hook.inbound {
			got[m.ID] = true
		}
		missing := 0
		for _, ids := range want {
			for _, id := range ids {
				if !got[id] {
					missing++
				}
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d inbound messages missing", missing, total)
		}
		return nil
	})
	hook.mu.Lock()
	defer hook.mu.Unlock()
	for to, ids := range want {
		pos := map[string]int{}
		for _, id := range ids {
			pos[id] = -1
		}
		var order []string
		for _, m := range hook.inbound {
			if p, ok := pos[m.ID]; ok && p < 0 {
				pos[m.ID] = len(order)
				order = append(order, m.ID)
			}
		}
		if fmt.Sprint(order) != fmt.Sprint(ids) {
			t.Errorf("recipient %s: %d inbound messages arrived out of order", to, len(ids))
		}
	}
}

// pendingEvents is the network's count of shard's events not yet
// acknowledged.
func pendingEvents(c *Cluster, shard int) (unacked int, err error) {
	var st struct {
		Shards []struct {
			Shard         int `json:"shard"`
			UnackedEvents int `json:"unacked_events"`
		} `json:"shards"`
	}
	if err := c.SimnetJSON("/v1/shards", &st); err != nil {
		return 0, err
	}
	for _, s := range st.Shards {
		if s.Shard == shard {
			return s.UnackedEvents, nil
		}
	}
	return 0, nil
}

// Issue 12, scenario 10 (c): the network holds 12,000 unacknowledged
// events for a shard (its primary's plugin was frozen while they came),
// then the plugin is SIGKILLed. The restarted plugin's connection gets them
// all at once; every one must be stored and reach the webhook, in order per
// recipient, and the network must end with none unacknowledged.
func TestEventBacklogSurvivesPluginRestart(t *testing.T) {
	c := New(t, Options{Shards: 1, Coreapps: 1})
	hook := withHook(t, c)
	_, plugin := freezePrimaryPlugin(t, c, 0)
	c.Eventually(10*time.Second, "the network dropped the frozen plugin's connection", func() error {
		if iv, ok := c.OpenConnection(0); ok {
			return fmt.Errorf("still open: %s epoch %d", iv.Node, iv.Epoch)
		}
		return nil
	})
	start := time.Now()
	want := injectInbound(t, c, recipients(c, 6), 2000, "in")
	n, err := pendingEvents(c, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the network holds %d unacknowledged events (injected in %v); SIGKILL plugin %d", n, time.Since(start).Round(time.Millisecond), plugin)
	if n < 12000 {
		t.Fatalf("only %d events pending; the test needs over 10,000", n)
	}
	if err := syscall.Kill(plugin, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	requireInbound(t, c, hook, want, 60*time.Second)
	t.Logf("all 12000 inbound messages at the webhook %v after the kill", time.Since(start).Round(time.Millisecond))
	var stored int
	if err := c.SQL.QueryRow(`SELECT COUNT(*) FROM callbacks WHERE kind = 'inbound'`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != 12000 {
		t.Errorf("%d inbound callbacks stored, want 12000", stored)
	}
	hook.mu.Lock()
	t.Logf("stored %d inbound callbacks; the webhook took %d deliveries of them (at least once)", stored, len(hook.inbound))
	hook.mu.Unlock()
	c.Eventually(10*time.Second, "no event left unacknowledged", func() error {
		if n, err := pendingEvents(c, 0); err != nil || n != 0 {
			return fmt.Errorf("%d unacknowledged (%v)", n, err)
		}
		return nil
	})
}

// restartSimnet kills the network and starts a new one on the same
// addresses: its event numbering starts again at 1.
func restartSimnet(c *Cluster) {
	c.T.Helper()
	c.Simnet.Kill()
	c.Simnet = Start(c.T, c.Dir, "simnetd-2", filepath.Join(c.Bin, "simnetd"), nil,
		"-listen", c.SimnetTCP, "-http", c.SimnetHTTP, "-keepalive", c.Opts.Keepalive.String())
	c.Eventually(10*time.Second, "the restarted network answers", func() error {
		_, err := c.simnetGet("/v1/info")
		return err
	})
}

// Issue 12, scenario 10 (d): a network whose event numbering starts again
// (simnetd restarted) pushes events whose (shard, seq) were already used.
// They are new events and must be stored and delivered, not dropped as
// copies of the old ones.
func TestEventsAfterNetworkRestart(t *testing.T) {
	c := New(t, Options{Shards: 1, Coreapps: 2})
	hook := withHook(t, c)
	tos := recipients(c, 3)
	before := injectInbound(t, c, tos, 20, "before")
	requireInbound(t, c, hook, before, 20*time.Second)

	restartSimnet(c)
	c.WaitConnected(0, "", 15*time.Second)
	after := injectInbound(t, c, tos, 20, "after")
	requireInbound(t, c, hook, after, 20*time.Second)
	var stored int
	if err := c.SQL.QueryRow(`SELECT COUNT(*) FROM callbacks WHERE kind = 'inbound'`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != 120 {
		t.Errorf("%d inbound callbacks stored, want 120 (60 before the restart, 60 after)", stored)
	}
}
