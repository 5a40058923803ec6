// Command master is the multiconnect master daemon. Run two or more: all
// compete for the master lease in MySQL; the primary upgrades the schema,
// broadcasts settings and keeps every shard served by one healthy primary
// coreapp; every master heartbeats every coreapp.
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/multiconnect/multiconnect/internal/changes"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/pprofserve"
	"github.com/multiconnect/multiconnect/internal/release"
	"github.com/multiconnect/multiconnect/internal/routetable"
	"github.com/multiconnect/multiconnect/internal/schema"
	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Master is one master process.
type Master struct {
	id       node.Identity
	db       *sql.DB
	log      *slog.Logger
	lease    *masterLease
	settings *settings.Cache
	// hub tells every node of a change the moment this master, as
	// primary, commits it (package changes).
	hub     *changes.Hub
	metrics *metrics
	mon     *monitor
	shards  int // MC_SHARDS: the shard count a new cluster starts with
	gc      gcConfig
	// plugin is the transport plugin registration talks to the network
	// through, started on first use; pluginErr says why there is none.
	plugin    *transport.Supervisor
	pluginErr error

	secretV         atomic.Value // string, once the cluster row exists
	mu              sync.Mutex
	stopDuty        context.CancelFunc // ends the primary's one-off duties
	ready           atomic.Bool        // schema current, registered
	lastNoCandidate time.Time
	// stalledBySeconds: the server has no PROCESSLIST.TIME_MS (MySQL), so
	// killStalled judges idle time in whole seconds.
	stalledBySeconds atomic.Bool
	nowait           database.Nowait // whether the server knows FOR UPDATE NOWAIT
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "routes" {
		// The route table, for the test that compares it with the OpenAPI
		// document.
		if err := routetable.Print(os.Stdout, (&Master{}).table().Routes()); err != nil {
			os.Exit(1)
		}
		return
	}
	pprofserve.Start("master") // profiles for benchmarks, only when MC_PPROF_DIR is set
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "master: cannot start: %v\n", err)
		os.Exit(1)
	}
}

type config struct {
	id       node.Identity
	db       database.Config
	shards   int
	leaseTTL time.Duration
	liveness time.Duration
	gc       gcConfig
	// plugin is the transport plugin binary (MC_TRANSPORT); pluginErr is
	// set when the default one is missing, which only disables
	// registration.
	plugin    string
	pluginErr error
	// pluginProcs is the plugin's GOMAXPROCS (MC_TRANSPORT_GOMAXPROCS).
	pluginProcs int
}

func configFromEnv() (config, error) {
	var c config
	var err error
	if c.id, err = node.FromEnv(node.RoleMaster, ":6260", "MASTER_EXTERNAL_PORTS"); err != nil {
		return c, err
	}
	if c.db, err = database.FromEnv(); err != nil {
		return c, err
	}
	c.shards = 1
	if v := os.Getenv("MC_SHARDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || !shard.ValidCount(n) {
			return c, fmt.Errorf("MC_SHARDS=%q: the shard count must be one of %v", v, shard.Counts)
		}
		c.shards = n
	}
	if c.leaseTTL, err = node.EnvDuration("MC_MASTER_LEASE", 10*time.Second); err != nil {
		return c, err
	}
	if c.leaseTTL < 300*time.Millisecond {
		return c, fmt.Errorf("MC_MASTER_LEASE=%v is too short: use at least 300ms", c.leaseTTL)
	}
	if c.liveness, err = node.EnvDuration("MC_LIVENESS_INTERVAL", 60*time.Second); err != nil {
		return c, err
	}
	if c.gc, err = gcFromEnv(); err != nil {
		return c, err
	}
	// A master needs the plugin only to register the account, so a
	// missing default plugin is a warning; a wrong MC_TRANSPORT is a
	// configuration error.
	if c.plugin, c.pluginErr = transport.PathFromEnv(); c.pluginErr != nil && os.Getenv("MC_TRANSPORT") != "" {
		return c, c.pluginErr
	}
	if c.pluginProcs, err = transport.ProcsFromEnv(); err != nil {
		return c, err
	}
	return c, nil
}

func run() error {
	cfg, err := configFromEnv()
	if err != nil {
		return err
	}
	// Bind before touching the database, so a port in use fails fast.
	ln, err := net.Listen("tcp", cfg.id.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen on %s (MC_LISTEN): %w", cfg.id.ListenAddr, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg.db.MaxOpen = database.MasterPool
	db, err := database.Open(ctx, cfg.db)
	if err != nil {
		return err
	}
	defer db.Close()
	leaseDB, err := database.OpenReserved(ctx, cfg.db, database.MasterLeasePool)
	if err != nil {
		return err
	}
	defer leaseDB.Close()
	m := &Master{id: cfg.id, db: db, log: node.Logger(cfg.id), metrics: newMetrics(), shards: cfg.shards, gc: cfg.gc}
	m.hub = changes.NewHub()
	m.lease = &masterLease{db: db, own: leaseDB, holder: fmt.Sprintf("%s#%d", cfg.id.ID, cfg.id.Incarnation), addr: cfg.id.ID, ttl: cfg.leaseTTL,
		committed: m.hub.Notify, wake: make(chan struct{}, 1)}
	m.settings = settings.NewCache(db, 0, m.log)
	if err := node.FollowSettings(m.settings, m.log); err != nil {
		return err
	}
	m.mon = newMonitor(m)
	m.plugin = &transport.Supervisor{Path: cfg.plugin, Procs: cfg.pluginProcs, Log: m.log}
	if cfg.pluginErr != nil {
		m.pluginErr = fmt.Errorf("registration is unavailable: %w", cfg.pluginErr)
		m.log.Warn("no transport plugin: this master cannot register the account", "err", cfg.pluginErr)
	}

	if _, err := schema.Check(ctx, db); err != nil {
		return err
	}
	if err := schema.Bootstrap(ctx, db); err != nil {
		return err
	}
	srv := &http.Server{Handler: m.routes(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	m.log.Info("master starting", "listen", cfg.id.ListenAddr, "lease_ttl", cfg.leaseTTL.String(), "version", release.Version)

	go m.lease.run(ctx, m)
	if err := schema.WaitCurrent(ctx, db, 200*time.Millisecond, func(have int) {
		m.log.Info("waiting for the primary master to upgrade the schema", "have", have, "want", schema.Latest())
	}); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if err := m.waitCluster(ctx); err != nil {
		return nil // only ctx ends it
	}
	if err := node.Register(ctx, db, cfg.id, 0); err != nil {
		return err
	}
	m.ready.Store(true)
	go m.settings.Run(ctx)
	go (&changes.Follower{DB: db, Secret: m.secret, Log: m.log, Reload: m.settings.Reload, Lost: m.lease.nudge}).Run(ctx)
	go m.liveness(ctx, cfg.liveness)
	go m.mon.run(ctx)
	<-ctx.Done()
	m.log.Info("master stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	m.plugin.Kill()
	return nil
}

// waitCluster waits for the cluster row (the primary creates it right after
// upgrading the schema) and caches the secret.
func (m *Master) waitCluster(ctx context.Context) error {
	for {
		if s, err := cluster.Secret(ctx, m.db); err == nil {
			m.secretV.Store(s)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (m *Master) secret() string {
	s, _ := m.secretV.Load().(string)
	return s
}

func (m *Master) liveness(ctx context.Context, every time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := node.Touch(qctx, m.db, m.id); err != nil && ctx.Err() == nil {
			m.dbError("liveness", err)
		}
		cancel()
	}
}

// becamePrimary runs the primary's start-up duties: upgrade the schema,
// create the cluster row and the shard map rows. The seeds: a new primary
// first loads the shard map; the monitor then promotes where needed.
func (m *Master) becamePrimary(epoch int64) {
	m.log.Info("became primary master", "epoch", epoch)
	m.metrics.primary.Set(1)
	m.metrics.epoch.Set(float64(epoch))
	ctx, cancel := context.WithCancel(context.Background())
	m.mu.Lock()
	m.stopDuty = cancel
	m.mu.Unlock()
	go func() {
		defer cancel()
		for ctx.Err() == nil && m.lease.valid.Valid() {
			err := m.primaryDuties(ctx)
			if err == nil {
				m.collectGarbage(ctx) // until this master is primary no more
				return
			}
			if errors.Is(err, schema.ErrTooNew) {
				m.log.Error("cannot act as primary: schema is newer than this binary; upgrade this master", "err", err)
				return
			}
			if !errors.Is(err, ErrNotPrimary) {
				m.log.Warn("primary start-up duties failed; retrying", "err", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
}

func (m *Master) primaryDuties(ctx context.Context) error {
	stillPrimary := func(context.Context) error {
		if !m.lease.valid.Valid() {
			return ErrNotPrimary
		}
		return nil
	}
	if err := schema.Upgrade(ctx, m.db, stillPrimary, m.log.Info); err != nil {
		return err
	}
	return m.lease.fenced(ctx, func(tx *sql.Tx) error {
		if err := cluster.Init(ctx, tx, m.shards); err != nil {
			return err
		}
		st, err := cluster.ReadState(ctx, tx)
		if err != nil {
			return err
		}
		if st.Shards != m.shards {
			m.log.Info("MC_SHARDS only applies to a new cluster; keeping the stored shard count", "shards", st.Shards, "MC_SHARDS", m.shards)
		}
		for s := 0; s < st.Shards; s++ {
			if err := createShard(ctx, tx, s); err != nil {
				return err
			}
		}
		return nil
	})
}

func (m *Master) lostPrimary(epoch int64) {
	m.log.Warn("no longer primary master", "epoch", epoch)
	m.metrics.primary.Set(0)
	// Answer the nodes waiting on this master: they look for the new
	// primary's hub.
	m.hub.Notify()
	m.mu.Lock()
	if m.stopDuty != nil {
		m.stopDuty()
	}
	m.mu.Unlock()
}

func (m *Master) noCandidate(shardID int, reason string) {
	m.metrics.noCandidate.Inc()
	m.mu.Lock()
	defer m.mu.Unlock()
	if time.Since(m.lastNoCandidate) > 10*time.Second {
		m.lastNoCandidate = time.Now()
		m.log.Warn("shard needs a primary coreapp but no healthy warm secondary exists", "shard", shardID, "reason", reason)
	}
}

func (m *Master) dbError(op string, err error) {
	m.metrics.dbErrors.WithLabelValues(op).Inc()
	m.log.Warn("database operation failed", "op", op, "err", err)
}
