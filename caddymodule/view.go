package caddymodule

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"

	"github.com/multiconnect/multiconnect/internal/changes"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/pause"
	"github.com/multiconnect/multiconnect/internal/schema"
	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/internal/shardmap"
)

// views holds one clusterView per database (and map refresh interval),
// shared by every handler that names it and kept across config reloads: a
// reload must not drop the shard map, the token cache or the login
// counters and start again from an empty gateway.
var views = caddy.NewUsagePool()

type viewKey struct {
	addr, user, password, name string
	refresh                    time.Duration
}

// clusterView is what this gateway process knows about the cluster. Every
// read on the request path is an atomic load; MySQL is only touched by the
// background poll, by forced refreshes after a failed proxy attempt, and by
// token checks that miss the cache.
type clusterView struct {
	cfg       database.Config
	refresh   time.Duration
	log       *zap.Logger
	metrics   *gatewayMetrics
	tokens    *tokenCache
	logins    *loginLimiter
	seedCost  int
	cancel    context.CancelFunc
	done      chan struct{}
	connected chan struct{} // closed once db is set

	level      zap.AtomicLevel // the module's log level, see loglevel.go
	levelFloor *slog.Level     // MC_LOG_LEVEL, nil when unset

	db     atomic.Pointer[sql.DB]
	maps   atomic.Pointer[shardmap.Cache]
	secret atomic.Pointer[[]string] // the cluster secret header value
	status atomic.Pointer[string]   // why the gateway cannot route yet; nil once it can
	loaded atomic.Int64             // unix nanos of the last successful map poll
	// settings are the cluster's application settings, kept current like
	// the nodes' (the log level follows them; the Cloud API webhook leaves
	// out the statuses they do not want); nil until the shard map loaded.
	settings atomic.Pointer[settings.Cache]

	coreapps atomic.Pointer[coreappSet] // the distinct primaries of the current map

	// wakes tells shards' primaries of the Cloud API webhook rows stored
	// for them (eventswake.go).
	wakes *eventsWaker

	forceMu    sync.Mutex
	lastForced time.Time

	leaseMu sync.Mutex
	lease   string // last primary master address read

	nodesMu sync.Mutex
	nodes   []nodeRow // last node list read for /v1/health

	// push wakes the map poll at once: the primary master announced a
	// change (package changes). polled is closed and replaced after
	// every map poll, so the certificate manager re-checks
	// settings_version right after one, not on a ticker of its own.
	push     chan struct{}
	polledMu sync.Mutex
	polled   chan struct{}
}

// pollDone returns a channel closed after the next shard map poll.
func (v *clusterView) pollDone() <-chan struct{} {
	v.polledMu.Lock()
	defer v.polledMu.Unlock()
	return v.polled
}

func (v *clusterView) announcePoll() {
	v.polledMu.Lock()
	close(v.polled)
	v.polled = make(chan struct{})
	v.polledMu.Unlock()
}

// pushed is the change feed's Reload: poll the shard map (and with it
// settings_version) now.
func (v *clusterView) pushed() {
	select {
	case v.push <- struct{}{}:
	default:
	}
}

func (v *clusterView) secretValue() string {
	if s := v.secret.Load(); s != nil && len(*s) > 0 {
		return (*s)[0]
	}
	return ""
}

func loadView(cfg database.Config, refresh time.Duration, seedCost int) (*clusterView, viewKey, error) {
	key := viewKey{cfg.Addr(), cfg.User, cfg.Password, cfg.Name, refresh}
	v, _, err := views.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newView(cfg, refresh, seedCost), nil
	})
	if err != nil {
		return nil, key, err
	}
	return v.(*clusterView), key, nil
}

func newView(cfg database.Config, refresh time.Duration, seedCost int) *clusterView {
	ctx, cancel := context.WithCancel(context.Background())
	level, floor := newModuleLevel()
	v := &clusterView{
		cfg: cfg, refresh: refresh, seedCost: seedCost,
		level: level, levelFloor: floor,
		log:     withLevel(caddy.Log().Named("multiconnect"), level),
		metrics: newGatewayMetrics(),
		tokens:  newTokenCache(),
		logins:  newLoginLimiter(),
		cancel:  cancel, done: make(chan struct{}), connected: make(chan struct{}),
		push: make(chan struct{}, 1), polled: make(chan struct{}),
	}
	v.metrics.mapAge = v.mapAge
	v.wakes = newEventsWaker(ctx, v)
	v.setStatus("starting: connecting to MySQL at " + cfg.Addr())
	go v.run(ctx)
	return v
}

// Destruct stops the background work when no handler uses the view any more.
func (v *clusterView) Destruct() error {
	v.cancel()
	<-v.done
	if db := v.db.Load(); db != nil {
		return db.Close()
	}
	return nil
}

func (v *clusterView) setStatus(s string) { v.status.Store(&s) }

// notReady says why requests cannot be routed yet, or "" when they can.
func (v *clusterView) notReady() string {
	if s := v.status.Load(); s != nil {
		return *s
	}
	return ""
}

// run connects, waits for the schema and the cluster row that the primary
// master creates, then keeps the shard map fresh until the view is dropped.
// Nothing here blocks Caddy's start or a config reload.
func (v *clusterView) run(ctx context.Context) {
	defer close(v.done)
	var db *sql.DB
	for db == nil {
		var err error
		db, err = database.Open(ctx, v.cfg)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			v.setStatus("waiting for MySQL: " + err.Error())
			v.log.Warn("cannot open the database; retrying", zap.Error(err))
			if !pause.For(ctx, 2*time.Second) {
				return
			}
		}
	}
	v.db.Store(db)
	close(v.connected)
	err := schema.WaitCurrent(ctx, db, 500*time.Millisecond, func(have int) {
		v.setStatus(fmt.Sprintf("waiting for the primary master to bring the schema to version %d (it is at %d)", schema.Latest(), have))
	})
	if err != nil {
		if errors.Is(err, schema.ErrTooNew) {
			v.setStatus(err.Error())
			v.log.Error("cannot serve this database", zap.Error(err))
		}
		return
	}
	for {
		secret, err := cluster.Secret(ctx, db)
		if err == nil {
			v.secret.Store(&[]string{secret})
			break
		}
		v.setStatus("waiting for the primary master to create the cluster row: " + err.Error())
		if !pause.For(ctx, 500*time.Millisecond) {
			return
		}
	}
	for {
		err := seedAdmin(ctx, db, v.seedCost)
		if err == nil {
			break
		}
		v.setStatus(err.Error())
		v.log.Warn("cannot create the default admin user; retrying", zap.Error(err))
		if !pause.For(ctx, time.Second) {
			return
		}
	}
	slogger := slog.New(zapslog.NewHandler(v.log.Core(), zapslog.AddStacktraceAt(slog.Level(127))))
	maps := shardmap.NewCache(db, v.refresh, slogger)
	maps.OnChange = func(m *shardmap.Map) {
		v.metrics.mapVersion.Set(float64(m.Version))
		v.metrics.mapChanges.Inc()
		v.log.Info("shard map changed", zap.Int64("version", m.Version), zap.Int("shards", m.Shards), zap.Any("primaries", primaries(m)))
	}
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := maps.Refresh(qctx, true)
		cancel()
		if err == nil {
			break
		}
		v.setStatus("waiting for the shard map: " + err.Error())
		if !pause.For(ctx, 500*time.Millisecond) {
			return
		}
	}
	v.loaded.Store(time.Now().UnixNano())
	v.maps.Store(maps)
	v.status.Store(nil)
	v.log.Info("gateway ready", zap.Int("shards", maps.Current().Shards))
	levels := settings.NewCache(db, 0, slogger)
	v.settings.Store(levels)
	go v.followLogLevel(ctx, levels)
	// Pushed changes: the map poll runs at once, the log level reloads.
	go (&changes.Follower{DB: db, Secret: v.secretValue, Log: slogger, Reload: func(ctx context.Context) {
		v.pushed()
		levels.Reload(ctx)
	}}).Run(ctx)

	// The shard map poll, wrapped to record when it last succeeded (the
	// age metric tells an operator the gateway is serving a stale map).
	// It runs every refresh_interval (a safety net) and at once on a push.
	go func() {
		t := time.NewTicker(v.refresh)
		defer t.Stop()
		failing := false
		for {
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := maps.Refresh(qctx, false)
			cancel()
			switch {
			case err == nil:
				v.loaded.Store(time.Now().UnixNano())
				if failing {
					v.log.Info("shard map refresh recovered")
				}
			case !failing && ctx.Err() == nil:
				v.log.Warn("shard map refresh failing; routing with the cached map", zap.Error(err))
			}
			failing = err != nil
			v.announcePoll()
			select {
			case <-ctx.Done():
				return
			case <-v.push:
			case <-t.C:
			}
		}
	}()
	sweep := time.NewTicker(time.Minute)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-sweep.C:
			v.tokens.sweep(now)
			v.logins.sweep(now)
		}
	}
}

func primaries(m *shardmap.Map) []string {
	out := make([]string, len(m.Entries))
	for i, e := range m.Entries {
		out[i] = e.NodeID
	}
	return out
}

func (v *clusterView) mapAge() float64 {
	at := v.loaded.Load()
	if at == 0 {
		return -1
	}
	return time.Since(time.Unix(0, at)).Seconds()
}

// currentMap returns the cached shard map (nil before the first load).
func (v *clusterView) currentMap() *shardmap.Map {
	if c := v.maps.Load(); c != nil {
		return c.Current()
	}
	return nil
}

// settingsVersion returns the cluster row's settings_version as of the
// last shard map poll (0 before the first).
func (v *clusterView) settingsVersion() int64 {
	if c := v.maps.Load(); c != nil {
		return c.SettingsVersion()
	}
	return 0
}

// mapChanged returns a channel closed at the next shard map change.
func (v *clusterView) mapChanged() <-chan struct{} {
	if c := v.maps.Load(); c != nil {
		return c.Changed()
	}
	return nil
}

// refreshMap reloads the shard map now, after a proxy attempt that failed
// at failedAt. Concurrent failures share one query: a reload that started
// after this failure already reflects what the failure could tell us.
func (v *clusterView) refreshMap(ctx context.Context, failedAt time.Time) {
	c := v.maps.Load()
	if c == nil {
		return
	}
	v.forceMu.Lock()
	defer v.forceMu.Unlock()
	if v.lastForced.After(failedAt) {
		return
	}
	v.lastForced = time.Now()
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := c.Refresh(qctx, false); err == nil {
		v.loaded.Store(time.Now().UnixNano())
	}
}

// errNoPrimaryMaster means no master holds the lease right now.
var errNoPrimaryMaster = errors.New("no master holds the master lease")

// primaryMaster reads the master lease. Master commands are rare, so each
// one reads the lease row rather than keeping a poll running; while MySQL is
// unreachable the last address read is used (the masters cannot work
// without MySQL either, but a read-only command may still be answered).
func (v *clusterView) primaryMaster(ctx context.Context) (string, error) {
	db := v.db.Load()
	if db == nil {
		return "", errors.New("not connected to MySQL yet")
	}
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var addr string
	var valid bool
	err := db.QueryRowContext(qctx, `SELECT holder_addr, expires_at > NOW(6) FROM master_lease WHERE id = 1`).Scan(&addr, &valid)
	v.leaseMu.Lock()
	defer v.leaseMu.Unlock()
	if err != nil {
		if v.lease != "" {
			return v.lease, nil
		}
		return "", fmt.Errorf("read the master lease: %w", err)
	}
	if !valid || addr == "" {
		return "", errNoPrimaryMaster
	}
	v.lease = addr
	return addr, nil
}
