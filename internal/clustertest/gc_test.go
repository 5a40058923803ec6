package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The garbage collector removes what is finished and old, only what
// garbagecollector_enable selects, and never an unsent message.
func TestGarbageCollector(t *testing.T) {
	c := New(t, Options{Coreapps: 2, MasterEnv: []string{"MC_GC_INTERVAL=200ms", "MC_GC_RETENTION=1s"}})
	c.PatchSettings(`{"garbagecollector_enable":{"messages":false,"media":false}}`)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		if code, _, body, err := c.PostMessage(ctx, "15550002", fmt.Sprintf(`{"to":"15550002","text":{"body":"gc %d"}}`, i), ""); err != nil || code != 201 {
			t.Fatalf("send: %d %s %v", code, body, err)
		}
	}
	primary, err := c.ShardPrimary(0)
	if err != nil {
		t.Fatal(err)
	}
	code, _, body := c.raw("POST", primary, "/v1/media", "image/png", []byte("\x89PNG gc"))
	var up struct {
		Media []struct{ ID string } `json:"media"`
	}
	if code != 201 || json.Unmarshal(body, &up) != nil || len(up.Media) != 1 {
		t.Fatalf("upload: %d %s", code, body)
	}
	file := filepath.Join(c.Dir, "media", up.Media[0].ID)
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("uploaded media not in the media directory: %v", err)
	}
	// An inbound message: its sender is kept (for marking it read) until
	// it is collected with the messages.
	if err := c.SimnetPost("/v1/inbound/acked", map[string]any{"recipient": "15550004"}); err != nil {
		t.Fatal(err)
	}
	// An unsent message whose shard has no sender: however old, it stays.
	if _, err := c.SQL.Exec(`INSERT INTO messages (id, shard_id, recipient, type, body, state, accepted_at)
		VALUES ('gc-unsent', 99, '15550003', 'text', '{}', 0, NOW(6) - INTERVAL 1 DAY)`); err != nil {
		t.Fatal(err)
	}
	c.Eventually(10*time.Second, "the three messages sent", func() error {
		var n int
		c.SQL.QueryRow(`SELECT COUNT(*) FROM messages WHERE state = 1`).Scan(&n)
		if n != 3 {
			return fmt.Errorf("%d sent", n)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // older than the retention, several collector rounds
	if n := c.countRows("messages"); n != 4 {
		t.Errorf("with the collector off for messages, %d rows remain, want 4", n)
	}
	if n := c.countRows("media"); n != 1 {
		t.Errorf("with the collector off for media, %d media rows remain, want 1", n)
	}
	if n := c.countRows("inbound_messages"); n != 1 {
		t.Errorf("with the collector off for messages, %d inbound messages remain, want 1", n)
	}

	c.PatchSettings(`{"garbagecollector_enable":{"messages":true,"media":true}}`)
	c.Eventually(10*time.Second, "sent messages and old media collected", func() error {
		if n := c.countRows("messages"); n != 1 {
			return fmt.Errorf("%d messages remain", n)
		}
		if n := c.countRows("media"); n != 0 {
			return fmt.Errorf("%d media rows remain", n)
		}
		if n := c.countRows("inbound_messages"); n != 0 {
			return fmt.Errorf("%d inbound messages remain", n)
		}
		if _, err := os.Stat(file); !os.IsNotExist(err) {
			return fmt.Errorf("media file still there: %v", err)
		}
		return nil
	})
	var id string
	if err := c.SQL.QueryRow(`SELECT id FROM messages`).Scan(&id); err != nil || id != "gc-unsent" {
		t.Errorf("the remaining message is %q (%v), want the unsent one", id, err)
	}
}

// The collector also purges the cluster's bookkeeping, whatever
// garbagecollector_enable says: expired and revoked tokens, failovers past
// the retention, acknowledged Cloud API webhook rows past it (at least 8
// days), observations not updated for the retention (at least
// 1 h), and nodes not seen for the retention (at least 24 h) that hold no
// shard. Live rows stay.
func TestGarbageCollectorPurgesBookkeeping(t *testing.T) {
	c := New(t, Options{Coreapps: 1, MasterEnv: []string{"MC_GC_INTERVAL=200ms", "MC_GC_RETENTION=1s"}})
	c.PatchSettings(`{"garbagecollector_enable":{"messages":false,"media":false}}`)
	for _, q := range []string{
		`INSERT INTO tokens VALUES (REPEAT('a', 64), 'admin', NOW(6) - INTERVAL 1 MINUTE, 0, NOW(6) - INTERVAL 1 DAY),
			(REPEAT('b', 64), 'admin', NOW(6) + INTERVAL 1 DAY, 1, NOW(6)),
			(REPEAT('c', 64), 'admin', NOW(6) + INTERVAL 1 DAY, 0, NOW(6))`,
		`INSERT INTO failovers (shard_id, old_node, new_node, epoch, reason, master_epoch, at) VALUES
			(0, NULL, 'x', 1, 'gc-old', 1, NOW(6) - INTERVAL 1 HOUR), (0, NULL, 'x', 1, 'gc-future', 1, NOW(6) + INTERVAL 1 DAY)`,
		`INSERT INTO observations VALUES ('ghost-master', 'gone-node', NULL, NOW(6) - INTERVAL 2 HOUR),
			('ghost-master', 'quiet-node', NULL, NOW(6) - INTERVAL 30 MINUTE)`,
		`INSERT INTO nodes (id, role, hostname, container, incarnation, started_at, last_seen) VALUES
			('dead:1', 'coreapp', 'h', 'c', 1, NOW(6) - INTERVAL 3 DAY, NOW(6) - INTERVAL 2 DAY),
			('dead:2', 'coreapp', 'h', 'c', 1, NOW(6) - INTERVAL 3 DAY, NOW(6) - INTERVAL 2 DAY),
			('quiet:1', 'coreapp', 'h', 'c', 1, NOW(6) - INTERVAL 3 DAY, NOW(6) - INTERVAL 12 HOUR)`,
		// A node that holds a shard stays however silent (a removed shard
		// id here, so the monitor leaves the row alone).
		`INSERT INTO shard_map (shard_id, node_id, lease_expires, connect_after) VALUES (31, 'dead:2', '2000-01-01', '2000-01-01')`,
		// Cloud API webhook rows: acknowledged ones go after the retention
		// but never before 8 days (the gateway deduplicates Meta's
		// retries against them); unacknowledged ones stay.
		`INSERT INTO cloudapi_inbound (shard, seq, dedupe_key, kind, message_id, recipient, ts, payload, received_at, acked) VALUES
			(0, 1, 'gc-acked-old', 'inbound', 'w1', '1', 0, '', NOW(6) - INTERVAL 9 DAY, 1),
			(0, 2, 'gc-acked-week', 'inbound', 'w2', '1', 0, '', NOW(6) - INTERVAL 7 DAY, 1),
			(0, 3, 'gc-unacked-old', 'inbound', 'w3', '1', 0, '', NOW(6) - INTERVAL 9 DAY, 0)`,
	} {
		if _, err := c.SQL.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	list := func(q string) string {
		rows, err := c.SQL.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var s string
			rows.Scan(&s)
			out = append(out, s)
		}
		return fmt.Sprint(out)
	}
	want := map[string]string{
		`SELECT LEFT(token_hash, 1) FROM tokens ORDER BY 1`:                                    "[c]",
		`SELECT reason FROM failovers WHERE reason LIKE 'gc-%'`:                                "[gc-future]",
		`SELECT node_id FROM observations WHERE master_id = 'ghost-master' ORDER BY 1`:         "[quiet-node]",
		`SELECT id FROM nodes WHERE id IN ('dead:1', 'dead:2', 'quiet:1') ORDER BY 1`:          "[dead:2 quiet:1]",
		`SELECT COUNT(*) FROM nodes WHERE last_seen > NOW(6) - INTERVAL 10 SECOND`:             "[3]",
		`SELECT COUNT(*) > 0 FROM observations WHERE updated_at > NOW(6) - INTERVAL 10 SECOND`: "[1]",
		`SELECT dedupe_key FROM cloudapi_inbound WHERE dedupe_key LIKE 'gc-%' ORDER BY 1`:      "[gc-acked-week gc-unacked-old]",
	}
	c.Eventually(10*time.Second, "the bookkeeping purged", func() error {
		for q, w := range want {
			if got := list(q); got != w {
				return fmt.Errorf("%s: %s, want %s", q, got, w)
			}
		}
		return nil
	})
}
