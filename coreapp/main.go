// Command coreapp is the multiconnect coreapp daemon. It starts as a warm
// secondary (transport plugin loaded, not connected); once the primary
// master promotes it for a shard it claims the shard, connects its transport
// and serves that shard's traffic. It keeps serving with all masters down,
// and steps down as soon as it can no longer prove its claim.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/multiconnect/multiconnect/coreapp/internal/accept"
	"github.com/multiconnect/multiconnect/coreapp/internal/api"
	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/internal/changes"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/pprofserve"
	"github.com/multiconnect/multiconnect/internal/release"
	"github.com/multiconnect/multiconnect/internal/schema"
	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Coreapp is what belongs to the process rather than to one stage: its
// identity, database pools, settings, metrics and transport plugin. The
// stages (README, "Inside the coreapp") are wired from it in run, each
// given only what its Deps name.
type Coreapp struct {
	id       node.Identity
	db       *sql.DB
	claimDB  *sql.DB // reserved for the shard claim: never queues behind requests
	log      *slog.Logger
	secret   string
	settings *settings.Cache
	metrics  *metrics
	plugins  *transport.Supervisor
	holder   *claim.Holder
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "routes" {
		// The route table, for the test that compares it with the OpenAPI
		// document.
		if err := api.PrintRoutes(); err != nil {
			os.Exit(1)
		}
		return
	}
	pprofserve.Start("coreapp") // profiles for benchmarks, only when MC_PPROF_DIR is set
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "coreapp: cannot start: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	id, err := node.FromEnv(node.RoleCoreapp, ":6250", "COREAPP_EXTERNAL_PORTS")
	if err != nil {
		return err
	}
	dbcfg, err := database.FromEnv()
	if err != nil {
		return err
	}
	liveness, err := node.EnvDuration("MC_LIVENESS_INTERVAL", 60*time.Second)
	if err != nil {
		return err
	}
	plugin, err := transport.PathFromEnv()
	if err != nil {
		return err
	}
	procs, err := transport.ProcsFromEnv()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", id.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen on %s (MC_LISTEN): %w", id.ListenAddr, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dbcfg.MaxOpen = database.CoreappPool
	db, err := database.Open(ctx, dbcfg)
	if err != nil {
		return err
	}
	defer db.Close()
	claimDB, err := database.OpenReserved(ctx, dbcfg, database.CoreappClaimPool)
	if err != nil {
		return err
	}
	defer claimDB.Close()
	c := &Coreapp{id: id, db: db, claimDB: claimDB, log: node.Logger(id), metrics: newMetrics()}
	c.settings = settings.NewCache(db, 0, c.log)
	if err := node.FollowSettings(c.settings, c.log); err != nil {
		return err
	}
	c.plugins = &transport.Supervisor{Path: plugin, Procs: procs, Log: c.log, OnExit: c.metrics.pluginRestarts.Inc, OnRestart: func() { c.holder.Nudge() }}
	st, err := c.stages(os.Getenv("MC_MEDIA_DIR"))
	if err != nil {
		return err
	}

	if _, err := schema.Check(ctx, db); err != nil {
		return err
	}
	if err := schema.WaitCurrent(ctx, db, 200*time.Millisecond, func(have int) {
		c.log.Info("waiting for the primary master to create or upgrade the schema", "have", have, "want", schema.Latest())
	}); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	for c.secret == "" {
		if c.secret, err = cluster.Secret(ctx, db); err != nil {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	if err := c.settings.Refresh(ctx); err != nil {
		c.log.Warn("could not load settings; using defaults until the next poll", "err", err)
	}
	// Warm secondary: the plugin runs, but connects only once promoted.
	if err := c.plugins.Start(ctx); err != nil {
		return nil // only ctx ends it
	}
	if err := node.Register(ctx, db, id, c.plugins.Info().KeepaliveTimeout.Milliseconds()); err != nil {
		return err
	}
	// Compile the message schema now, not in the first message's request.
	if err := accept.Precompile(); err != nil {
		c.log.Error("the message schema does not compile; every message will be refused", "err", err)
	}
	srv := st.api(c.secret).HTTP()
	go srv.Serve(ln)
	c.log.Info("coreapp serving as warm secondary", "listen", id.ListenAddr, "transport", plugin, "version", release.Version)

	go c.settings.Run(ctx)
	go (&changes.Follower{DB: db, Secret: func() string { return c.secret }, Log: c.log, Reload: c.settings.Reload}).Run(ctx)
	go c.plugins.Watch(ctx)
	go c.liveness(ctx, liveness)
	go st.acceptor.Run(ctx)
	go st.outbox.Run(ctx)
	go st.events.Subscribe(ctx)
	go st.events.Run(ctx)
	go st.webhooks.Run(ctx)
	done := make(chan struct{})
	go func() { c.holder.Run(ctx); close(done) }()
	<-ctx.Done()
	c.log.Info("coreapp stopping")
	<-done
	srv.Shutdown()
	c.plugins.Kill()
	return nil
}

func (c *Coreapp) liveness(ctx context.Context, every time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := node.Touch(qctx, c.db, c.id); err != nil && ctx.Err() == nil {
			c.dbError("liveness", err)
		}
		cancel()
	}
}

func (c *Coreapp) dbError(op string, err error) {
	c.metrics.dbErrors.WithLabelValues(op).Inc()
	c.log.Warn("database operation failed", "op", op, "err", err)
}
