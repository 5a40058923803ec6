package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/inbound"
)

// gcBatch bounds each DELETE, so the collector never holds long locks on
// the tables the message path writes.
const gcBatch = 1000

// gcConfig is the garbage collector's schedule (MC_GC_INTERVAL, default
// 1h) and how old a row must be to go (MC_GC_RETENTION, default 30 days,
// the original's media retention). What it removes is the
// garbagecollector_enable setting's.
type gcConfig struct {
	interval, retention time.Duration
	mediaDir            string
}

func gcFromEnv() (gcConfig, error) {
	var c gcConfig
	var err error
	if c.interval, err = node.EnvDuration("MC_GC_INTERVAL", time.Hour); err != nil {
		return c, err
	}
	if c.retention, err = node.EnvDuration("MC_GC_RETENTION", 30*24*time.Hour); err != nil {
		return c, err
	}
	if c.interval <= 0 || c.retention <= 0 {
		return c, errors.New("MC_GC_INTERVAL and MC_GC_RETENTION must be positive")
	}
	c.mediaDir = os.Getenv("MC_MEDIA_DIR")
	return c, nil
}

// Bounds of the collector's housekeeping: nodes and observations go only
// after MC_GC_RETENTION and at least this long without a sign of life, so a
// short test retention never removes a node that is merely slow.
const (
	gcSilentFloor = time.Hour
	gcNodeFloor   = 24 * time.Hour
	// gcBatchTimeout bounds one batch's statement.
	gcBatchTimeout = 10 * time.Second
)

// collectGarbage runs while this master is primary. It only ever deletes
// what is finished: sent or failed messages, delivered callbacks, and
// media uploads, each older than the retention; an unsent message or an
// undelivered callback stays however old it is. Whatever the setting, it
// also purges the cluster's own bookkeeping: tokens expired or revoked,
// failovers (the audit trail) older than the retention, observations not
// updated and nodes not seen for the retention (at least 1 h and 24 h),
// a node only while it holds no shard.
func (m *Master) collectGarbage(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(m.gc.interval):
		}
		ret := m.gc.retention.Microseconds()
		gc := m.settings.Get().GarbageCollector
		if gc.Messages {
			m.gcRows(ctx, "messages", `DELETE FROM messages WHERE sent_at < NOW(6) - INTERVAL ? MICROSECOND AND state <> 0 LIMIT ?`, ret)
			m.gcRows(ctx, "callbacks", `DELETE FROM callbacks WHERE delivered_at < NOW(6) - INTERVAL ? MICROSECOND AND delivered = 1 LIMIT ?`, ret)
			m.gcRows(ctx, "inbound_messages", gcInbound, ret)
		}
		if gc.Media {
			m.gcMedia(ctx)
		}
		m.gcRows(ctx, "tokens", `DELETE FROM tokens WHERE revoked = 1 LIMIT ?`)
		m.gcRows(ctx, "tokens", `DELETE FROM tokens WHERE revoked = 0 AND expires_at < NOW(6) LIMIT ?`)
		// The Cloud API's acknowledged webhook rows: the transport's
		// bookkeeping (the callbacks hold what the user sees), collected
		// whatever the messages setting, never younger than the gateway
		// still deduplicates against.
		m.gcRows(ctx, "cloudapi_inbound", inbound.CollectQuery, max(m.gc.retention, inbound.MinRetention).Microseconds())
		m.gcRows(ctx, "failovers", `DELETE FROM failovers WHERE at < NOW(6) - INTERVAL ? MICROSECOND LIMIT ?`, ret)
		m.gcRows(ctx, "observations", `DELETE FROM observations WHERE updated_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT ?`,
			max(m.gc.retention, gcSilentFloor).Microseconds())
		m.gcRows(ctx, "nodes", `DELETE FROM nodes WHERE last_seen < NOW(6) - INTERVAL ? MICROSECOND
			AND id NOT IN (SELECT node_id FROM shard_map WHERE node_id IS NOT NULL) LIMIT ?`,
			max(m.gc.retention, gcNodeFloor).Microseconds())
	}
}

// gcRows runs query (its last argument is the batch size) until a batch
// comes back short, while this master holds the lease. Each batch is its
// own autocommitted statement, not a fenced transaction, so no batch holds
// the lease row (a fenced transaction share-locks it and the lease renewal
// would wait), and each finds its rows by an index range (schema 5), so
// it reads about what it deletes. That is safe without the fence: every
// row these queries match is finished for good (sent, delivered, expired,
// revoked, silent past the bound) and never changes back, so a deposed
// master finishing a batch deletes only what the new primary would delete
// too, and deleting a row twice is a no-op.
//
// It returns the rows deleted and the error that stopped it, if any.
func (m *Master) gcRows(ctx context.Context, table, query string, args ...any) (deleted int64, err error) {
	args = append(args, gcBatch)
	for ctx.Err() == nil && m.lease.valid.Valid() {
		start := time.Now()
		qctx, cancel := context.WithTimeout(ctx, gcBatchTimeout)
		res, err := m.db.ExecContext(qctx, query, args...)
		cancel()
		var n int64
		if err == nil {
			n, err = res.RowsAffected()
		}
		if err != nil {
			m.dbError("gc "+table, fmt.Errorf("delete a batch: %w", err))
			return deleted, err
		}
		deleted += n
		if n > 0 {
			m.metrics.gcDeleted.WithLabelValues(table).Add(float64(n))
			m.log.Info("garbage collected", "table", table, "rows", n, "seconds", time.Since(start).Seconds())
		}
		if n < gcBatch {
			return deleted, nil
		}
		// Yield to the message path: pause as long as the batch took (up
		// to a second), so the collector takes at most about half of the
		// database's time. An hourly run has an hour to finish.
		select {
		case <-ctx.Done():
			return deleted, ctx.Err()
		case <-time.After(min(time.Since(start), time.Second)):
		}
	}
	return deleted, ctx.Err()
}

// gcMedia removes old uploads: the row first, so no message can name a
// file that is gone, then the file in the shared media directory.
func (m *Master) gcMedia(ctx context.Context) {
	if m.gc.mediaDir == "" {
		m.log.Warn("garbagecollector_enable.media is on but MC_MEDIA_DIR is not set on this master; media not collected")
		return
	}
	for ctx.Err() == nil {
		var ids []string
		err := m.lease.fenced(ctx, func(tx *sql.Tx) error {
			ids = ids[:0]
			rows, err := tx.QueryContext(ctx, `SELECT id FROM media WHERE created_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT ? FOR UPDATE`,
				m.gc.retention.Microseconds(), gcBatch)
			if err != nil {
				return err
			}
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					rows.Close()
					return err
				}
				ids = append(ids, id)
			}
			rows.Close()
			for _, id := range ids {
				if _, err := tx.ExecContext(ctx, `DELETE FROM media WHERE id = ?`, id); err != nil {
					return err
				}
			}
			return rows.Err()
		})
		if err != nil {
			m.dbError("gc media", err)
			return
		}
		for _, id := range ids {
			if err := os.Remove(filepath.Join(m.gc.mediaDir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
				m.log.Warn("garbage collector could not remove a media file", "id", id, "err", fmt.Sprint(err))
			}
		}
		if len(ids) > 0 {
			m.metrics.gcDeleted.WithLabelValues("media").Add(float64(len(ids)))
			m.log.Info("garbage collected", "table", "media", "rows", len(ids))
		}
		if len(ids) < gcBatch {
			return
		}
	}
}
