package claim_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim/claimtest"
	"github.com/multiconnect/multiconnect/plugins/simnet"
	"github.com/multiconnect/multiconnect/plugins/simnet/simnettest"
)

// TestNewShardCountReachesThePluginAtOnce runs the holder with the real
// transport-simnet plugin against the simulated network, renewing only
// every 60 s, and changes the shard count as a re-shard does (the cluster
// row, then the pushed reload): the network must learn the new count at
// once, not at the next renewal. The count is what makes a plugin pick up
// what the re-shard moved into its shard (the network's unacknowledged
// events, the Cloud API's stored inbound rows); before, that waited for
// the next renewal, heartbeat_interval later (5 s by default).
func TestNewShardCountReachesThePluginAtOnce(t *testing.T) {
	bin := simnettest.Plugin(t)
	log := slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	net1 := simnettest.Network(t, simnet.Config{Keepalive: 10 * time.Second, Logger: log.With("who", "simnet")})

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rig := claimtest.New(t, ctx, claimtest.Options{DBName: "layoutpush", Plugin: bin, Log: log,
		Settings: `{"heartbeat_interval":60,"unhealthy_interval":300}`,
		Poll:     time.Hour}) // no poll: only the pushed reload below
	db, cache, holder := rig.DB, rig.Settings, rig.Holder
	rig.Run(t, ctx, cancel)
	if n, _ := net1.Layout(); n != 1 {
		t.Fatalf("the network knows %d shards after the connect, want 1", n)
	}

	// The re-shard, as the coreapp sees it: the cluster row, then the
	// master's pushed change (changes.Follower calls Reload).
	if _, err := db.Exec(`UPDATE cluster SET shards = 2, map_version = map_version + 1 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cache.Reload(ctx)
	for {
		n, _ := net1.Layout()
		if n == 2 {
			t.Logf("the network learned the new count %v after the reload", time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("the network still knows %d shards 3 s after the reload (renewals every 60 s): the count waits for the next renewal", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := holder.Status(); !st.Primary || !st.Connected {
		t.Fatalf("the holder let go of its connection: %+v", st)
	}
}

// testLog sends logs to the test's log.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-min(1, len(p))]))
	return len(p), nil
}
