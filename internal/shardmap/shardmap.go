// Package shardmap reads the shard map (which coreapp serves which shard, at
// which epoch) and keeps a cached copy fresh by polling the cluster row's
// map_version: one indexed single-row read per poll, so a gateway can notice
// a promotion within a fraction of a second without loading the DB.
package shardmap

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/shard"
)

// Entry is one shard's assignment. NodeID is empty for an unassigned shard;
// it is the coreapp's internal address (host:port).
type Entry struct {
	Shard       int
	NodeID      string
	Incarnation int64
	Epoch       int64
}

// Map is a consistent snapshot of the shard map.
type Map struct {
	Shards  int
	Version int64
	Entries []Entry // indexed by shard, len == Shards
	// SettingsVersion is the cluster row's settings_version read with it.
	SettingsVersion int64
}

// Lookup returns the entry serving recipient.
func (m *Map) Lookup(recipient string) (Entry, error) {
	s, err := shard.For(recipient, m.Shards)
	if err != nil {
		return Entry{}, err
	}
	return m.Entries[s], nil
}

// Load reads the map in one transaction so count, version and rows agree.
func Load(ctx context.Context, db *sql.DB) (*Map, error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead})
	if err != nil {
		return nil, fmt.Errorf("load shard map: %w", err)
	}
	defer tx.Rollback()
	st, err := cluster.ReadState(ctx, tx)
	if err != nil {
		return nil, fmt.Errorf("load shard map: %w", err)
	}
	m := &Map{Shards: st.Shards, Version: st.MapVersion, Entries: make([]Entry, st.Shards), SettingsVersion: st.SettingsVersion}
	for i := range m.Entries {
		m.Entries[i].Shard = i
	}
	rows, err := tx.QueryContext(ctx, `SELECT shard_id, COALESCE(node_id, ''), incarnation, epoch FROM shard_map WHERE shard_id < ?`, st.Shards)
	if err != nil {
		return nil, fmt.Errorf("load shard map: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var e Entry
		if err := rows.Scan(&e.Shard, &e.NodeID, &e.Incarnation, &e.Epoch); err != nil {
			return nil, fmt.Errorf("load shard map: %w", err)
		}
		m.Entries[e.Shard] = e
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load shard map: %w", err)
	}
	return m, tx.Commit()
}

// Cache holds the latest map. Current never blocks on the database: while
// MySQL is unreachable the last map keeps serving (nodes keep working with
// the map they have when masters or the DB are down).
type Cache struct {
	db       *sql.DB
	interval time.Duration
	log      *slog.Logger
	cur      atomic.Pointer[Map]
	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change
	settings atomic.Int64  // settings_version as of the last poll
	// OnChange, if set before Run, is called after every reload that changed the map.
	OnChange func(*Map)
}

// SafetyPoll is the poll interval when none is given: the primary master
// pushes every change of the map (package changes) and the node calls
// Refresh at once, so the poll only catches a lost push.
const SafetyPoll = 10 * time.Second

// NewCache makes a cache polling every interval (SafetyPoll when zero).
func NewCache(db *sql.DB, interval time.Duration, log *slog.Logger) *Cache {
	if interval <= 0 {
		interval = SafetyPoll
	}
	return &Cache{db: db, interval: interval, log: log, changed: make(chan struct{})}
}

// Current returns the latest map, or nil before the first successful load.
func (c *Cache) Current() *Map { return c.cur.Load() }

// Changed returns a channel closed at the next change of the map.
func (c *Cache) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// SettingsVersion returns the cluster row's settings_version as of the
// last poll (0 before the first): the poll reads it anyway, so what a
// gateway keeps from a settings row is re-read only when it moves.
func (c *Cache) SettingsVersion() int64 { return c.settings.Load() }

// Refresh reloads now if the version moved (or force is set).
func (c *Cache) Refresh(ctx context.Context, force bool) error {
	if cur := c.cur.Load(); cur != nil && !force {
		st, err := cluster.ReadState(ctx, c.db)
		if err != nil {
			return err
		}
		c.settings.Store(st.SettingsVersion)
		if st.MapVersion == cur.Version && st.Shards == cur.Shards {
			return nil
		}
	}
	m, err := Load(ctx, c.db)
	if err != nil {
		return err
	}
	c.settings.Store(m.SettingsVersion)
	if old := c.cur.Swap(m); old == nil || old.Version != m.Version || old.Shards != m.Shards {
		c.mu.Lock()
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		if c.OnChange != nil {
			c.OnChange(m)
		}
	}
	return nil
}

// Run polls until ctx ends, logging (once per outage) when the DB fails.
func (c *Cache) Run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	failing := false
	for {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := c.Refresh(qctx, false)
		cancel()
		if err != nil && !failing && ctx.Err() == nil {
			c.log.Warn("shard map refresh failing; serving the cached map", "err", err)
		} else if err == nil && failing {
			c.log.Info("shard map refresh recovered")
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
