package clustertest

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Callbacks a removed shard could not deliver follow its recipients to
// their new shard: the webhook refuses shard 2's recipients, the count
// shrinks 4 -> 2 (shard 2's recipients now belong to shard 0, whose
// dispatcher has long delivered callbacks newer than theirs), the webhook
// recovers, and every callback must arrive within 10 s, in order per
// recipient, including those of messages sent after the change.
func TestCallbacksFollowAShrink(t *testing.T) {
	c := New(t, Options{Shards: 4, Coreapps: 5})
	hook := startHook(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	tos := recipients(c, 16)
	moved := map[string]bool{}
	var movedTos, shard0 []string
	for _, to := range tos {
		switch c.ShardOf(to) {
		case 2:
			moved[to] = true
			movedTos = append(movedTos, to)
		case 0:
			shard0 = append(shard0, to)
		}
	}
	hook.failFor.Store(&moved)
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q,"max_concurrent_requests":6,"message":{"sent":true,"delivered":true,"read":true}},
		"callback_backoff_delay_ms":100,"max_callback_backoff_delay_ms":300}`, hook.url))
	time.Sleep(600 * time.Millisecond) // settings reach every node within one 200 ms poll

	sent := map[string][]string{}
	inbound := map[string][]string{}
	send := func(to string, j int) {
		t.Helper()
		id, err := sendUntilAccepted(ctx, c, to, fmt.Sprintf(`{"to":%q,"text":{"body":"m%d"}}`, to, j), fmt.Sprintf("%s-%d", to, j))
		if err != nil {
			t.Fatal(err)
		}
		sent[to] = append(sent[to], id)
	}
	for j := 0; j < 4; j++ {
		for _, to := range tos {
			send(to, j)
		}
		for _, to := range movedTos {
			inID := fmt.Sprintf("in-%s-%d", to, j)
			if err := c.SimnetPost("/v1/inbound", map[string]any{"shard": 2, "id": inID, "recipient": to,
				"payload": map[string]any{"type": "text", "text": map[string]string{"body": inID}}}); err != nil {
				t.Fatal(err)
			}
			inbound[to] = append(inbound[to], inID)
		}
	}
	// Shard 2's callbacks are all stored and refused; then shard 0 delivers
	// callbacks of a later message, so its dispatcher is past every one of
	// shard 2's.
	stuck := 3*4*len(movedTos) + 4*len(movedTos)
	c.Eventually(20*time.Second, "shard 2's callbacks stored, undelivered", func() error {
		var n int
		c.SQL.QueryRow(`SELECT COUNT(*) FROM callbacks WHERE shard_id = 2 AND delivered = 0`).Scan(&n)
		if n != stuck {
			return fmt.Errorf("%d undelivered on shard 2, want %d", n, stuck)
		}
		return nil
	})
	send(shard0[0], 4)
	others := map[string][]string{}
	for _, to := range tos {
		if !moved[to] {
			others[to] = sent[to]
		}
	}
	c.Eventually(20*time.Second, "the other shards' callbacks delivered", func() error {
		return hook.missing(tos, others, nil)
	})
	var maxStuck, maxShard0 int64
	c.SQL.QueryRow(`SELECT MAX(seq) FROM callbacks WHERE shard_id = 2`).Scan(&maxStuck)
	c.SQL.QueryRow(`SELECT MAX(seq) FROM callbacks WHERE shard_id = 0 AND delivered = 1`).Scan(&maxShard0)
	if maxShard0 <= maxStuck {
		t.Fatalf("shard 0 delivered up to seq %d, not past shard 2's %d: the test would prove nothing", maxShard0, maxStuck)
	}

	primary, err := c.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	if code, out, err := c.Internal("POST", primary, "/v1/account/shards", `{"shards":2}`); err != nil || code != 201 {
		t.Fatalf("POST shards 2: %d %s %v", code, out, err)
	}
	c.Eventually(20*time.Second, "shards 0 and 1 connected, 2 and 3 not", func() error {
		for s := 0; s < 4; s++ {
			if _, ok := c.OpenConnection(s); ok != (s < 2) {
				return fmt.Errorf("shard %d connected: %v", s, ok)
			}
		}
		return nil
	})
	// Messages after the change: their callbacks must come after the
	// moved ones of the same recipient.
	for _, to := range movedTos {
		send(to, 5)
	}
	recovered := time.Now()
	hook.failFor.Store(nil)
	c.Eventually(10*time.Second, "every callback delivered within 10 s of the webhook's recovery", func() error {
		return hook.missing(tos, sent, inbound)
	})
	t.Logf("%d callbacks of shard 2's %d recipients stranded at the change; all delivered %v after the webhook recovered",
		stuck, len(movedTos), time.Since(recovered).Round(time.Millisecond))
	hook.checkOrder(t, tos, sent, inbound)
	c.RequireNoViolations()
}
