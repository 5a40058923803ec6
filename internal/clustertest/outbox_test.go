package clustertest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// withHook points the cluster's webhook at a new receiver and waits until
// every node has the setting.
func withHook(t *testing.T, c *Cluster) *hookReceiver {
	hook := startHook(t)
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q,"max_concurrent_requests":6}}`, hook.url))
	time.Sleep(600 * time.Millisecond) // settings reach every node within one 200 ms poll
	return hook
}

// freezePrimaryPlugin SIGSTOPs the transport plugin of shard's primary and
// returns the primary's address and the plugin's PID.
func freezePrimaryPlugin(t *testing.T, c *Cluster, shard int) (string, int) {
	t.Helper()
	primary, err := c.ShardPrimary(shard)
	if err != nil {
		t.Fatal(err)
	}
	plugin := c.CoreappByAddr(primary).Children()
	if len(plugin) != 1 {
		t.Fatalf("primary %s has children %v, want its one plugin", primary, plugin)
	}
	if err := syscall.Kill(plugin[0], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	return primary, plugin[0]
}

// maxText is a text message of the largest size the API takes: 4096
// characters, each a multi-byte '中' written as a JSON escape (6 bytes),
// about 24.6 kB on the wire.
func maxText(to string, n int) string {
	return fmt.Sprintf(`{"to":%q,"type":"text","text":{"body":"%d %s"}}`, to, n, strings.Repeat(`\u4e2d`, 4090))
}

// Issue 12, scenario 1: 600 maximum-size texts queued on one shard while
// the primary's plugin is frozen make a backlog of ~15 MB, over the
// plugin's 4 MiB gRPC limit and the network's 4 MiB frame. Once the plugin
// wakes, the outbox must empty and the network must receive every message
// once, in order per recipient. One message too large for any frame the
// path allows (a 5 MiB contacts card) is queued among them: it must fail
// alone, with a failed status callback, and not hold up the others.
func TestOutboxDrainsOversizedBacklog(t *testing.T) {
	// One coreapp: with a spare, the master could move the shard to it
	// while the plugin is frozen, and the spare would send each message
	// as it comes instead of facing the backlog.
	c := New(t, Options{Shards: 1, Coreapps: 1})
	hook := withHook(t, c)
	primary, plugin := freezePrimaryPlugin(t, c, 0)
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			syscall.Kill(plugin, syscall.SIGCONT)
		}
	}
	defer thaw()
	t.Logf("froze plugin %d of primary %s", plugin, primary)

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	tos := recipients(c, 4)
	const perRecipient = 150
	accepted := make([][]string, len(tos))
	var bigID string
	var wg sync.WaitGroup
	errs := make(chan error, len(tos))
	for i, to := range tos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < perRecipient; j++ {
				id, err := sendUntilAccepted(ctx, c, to, maxText(to, j), fmt.Sprintf("big-%s-%d", to, j))
				if err != nil {
					errs <- fmt.Errorf("recipient %s message %d: %w", to, j, err)
					return
				}
				accepted[i] = append(accepted[i], id)
				if i == 0 && j == perRecipient/2 {
					// Straight to the coreapp: the gateway's default
					// body limit (1 MiB) would refuse it.
					card := fmt.Sprintf(`{"to":%q,"type":"contacts","contacts":[{"name":{"formatted_name":%q}}]}`,
						to, strings.Repeat("x", 5<<20))
					if bigID, err = sendUntilAccepted(ctx, c, to, card, "too-big"); err != nil {
						errs <- fmt.Errorf("the 5 MiB card: %w", err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var queued int
	if err := c.SQL.QueryRow(`SELECT COUNT(*) FROM messages WHERE state = 0`).Scan(&queued); err != nil {
		t.Fatal(err)
	}
	t.Logf("queued %d unsent messages (of %d accepted) with the plugin frozen", queued, len(tos)*perRecipient+1)
	if queued < len(tos)*perRecipient {
		t.Fatalf("only %d messages queued: the backlog this test is about did not form", queued)
	}
	thaw()
	start := time.Now()

	want := len(tos) * perRecipient
	c.Eventually(60*time.Second, "the outbox empties and the network has every message", func() error {
		var unsent int
		if err := c.SQL.QueryRow(`SELECT COUNT(*) FROM messages WHERE state = 0`).Scan(&unsent); err != nil {
			return err
		}
		var st struct {
			Shards []struct {
				Shard    int `json:"shard"`
				Messages int `json:"messages"`
			} `json:"shards"`
		}
		if err := c.SimnetJSON("/v1/shards", &st); err != nil {
			return err
		}
		got := 0
		for _, s := range st.Shards {
			got += s.Messages
		}
		if unsent > 0 || got < want {
			return fmt.Errorf("%d unsent rows, %d of %d messages at the network", unsent, got, want)
		}
		return nil
	})
	t.Logf("outbox drained %d messages %v after the plugin woke", want, time.Since(start).Round(time.Millisecond))
	c.RequireInOrderOnce(tos, accepted)

	var state int
	var reason string
	if err := c.SQL.QueryRow(`SELECT state, COALESCE(error, '') FROM messages WHERE id = ?`, bigID).Scan(&state, &reason); err != nil {
		t.Fatal(err)
	}
	if state != 2 {
		t.Errorf("the 5 MiB card has state %d, want 2 (failed)", state)
	}
	t.Logf("the 5 MiB card failed: %s", reason)
	c.Eventually(20*time.Second, "a failed status for the 5 MiB card at the webhook", func() error {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		for _, s := range hook.statuses {
			if s.ID == bigID && s.Status == "failed" {
				return nil
			}
		}
		return fmt.Errorf("%d statuses, none failed for %s", len(hook.statuses), bigID)
	})
	c.RequireNoViolations()
}
