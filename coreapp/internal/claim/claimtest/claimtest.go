// Package claimtest sets up the claim holder on real parts for a test: a
// private MariaDB with a one-shard cluster whose shard 0 is assigned to the
// test's node, the settings cache, and a transport plugin run by its
// supervisor as its own process. It is a test harness, not part of any
// daemon.
package claimtest

import (
	"context"
	"database/sql"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Node is the identity the holder runs as; Epoch is the epoch shard 0 is
// assigned at.
var Node = node.Identity{ID: "me:1", Incarnation: 7}

const Epoch = 3

// Options shape a Rig.
type Options struct {
	DBName   string        // the private database's name
	Plugin   string        // the transport plugin binary
	Settings string        // a settings patch (JSON) applied before the cache loads
	Poll     time.Duration // the cache's poll interval; 0 polls at its default
	Log      *slog.Logger
}

// Rig is a holder with everything it stands on. The holder is made, not run:
// the test wires what it needs around it first, then calls Run.
type Rig struct {
	DB       *sql.DB
	Settings *settings.Cache
	Plugins  *transport.Supervisor
	Holder   *claim.Holder
	DBError  func(op string, err error)
}

// New builds the rig; ctx bounds the plugin and the holder.
func New(t *testing.T, ctx context.Context, o Options) *Rig {
	t.Helper()
	db := mariadbtest.Migrated(t, o.DBName)
	if err := cluster.Init(ctx, db, 1); err != nil {
		t.Fatal(err)
	}
	if o.Settings != "" {
		if _, err := settings.Patch(ctx, db, []byte(o.Settings)); err != nil {
			t.Fatal(err)
		}
	}
	mariadbtest.Assign(t, db, 0, Node.ID, Node.Incarnation, Epoch, 5*time.Minute)
	r := &Rig{DB: db, DBError: func(op string, err error) { o.Log.Warn("database operation failed", "op", op, "err", err) }}
	r.Settings = settings.NewCache(db, o.Poll, o.Log)
	if err := r.Settings.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	r.Plugins = &transport.Supervisor{Path: o.Plugin, Log: o.Log}
	if err := r.Plugins.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Plugins.Kill() })
	r.Holder = claim.New(claim.Deps{ID: Node, DB: db, Log: o.Log, Settings: r.Settings, Plugins: r.Plugins,
		DBError: r.DBError, Wake: func() {},
		Metrics: claim.Metrics{Registry: prometheus.NewRegistry(), Primary: prometheus.NewGauge(prometheus.GaugeOpts{Name: "p"}),
			Shard: prometheus.NewGauge(prometheus.GaugeOpts{Name: "s"}), Connects: prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}),
			StepDowns: prometheus.NewCounter(prometheus.CounterOpts{Name: "d"})}})
	return r
}

// Run runs the holder until cancel, which the test's cleanup calls before
// the plugin is killed (the holder steps down and hands back first), then
// assigns it shard 0 and waits until it is the connected primary.
func (r *Rig) Run(t *testing.T, ctx context.Context, cancel context.CancelFunc) {
	t.Helper()
	ran := make(chan struct{})
	go func() { r.Holder.Run(ctx); close(ran) }()
	t.Cleanup(func() { cancel(); <-ran })
	r.Holder.Assign(0, Epoch)
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if st := r.Holder.Status(); st.Primary && st.Connected {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("not the connected primary 10 s after the assignment: %+v", r.Holder.Status())
		}
	}
}
