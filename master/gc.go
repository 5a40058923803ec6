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

// collectGarbage runs while this master is primary. It only ever deletes
// what is finished: sent or failed messages, delivered callbacks, and
// media uploads, each older than the retention; an unsent message or an
// undelivered callback stays however old it is.
func (m *Master) collectGarbage(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(m.gc.interval):
		}
		gc := m.settings.Get().GarbageCollector
		if gc.Messages {
			m.gcRows(ctx, "messages", `DELETE FROM messages WHERE state <> 0 AND sent_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT ?`)
			m.gcRows(ctx, "callbacks", `DELETE FROM callbacks WHERE delivered = 1 AND delivered_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT ?`)
		}
		if gc.Media {
			m.gcMedia(ctx)
		}
	}
}

// gcRows deletes in batches, each fenced by the master lease, until a
// batch comes back short.
func (m *Master) gcRows(ctx context.Context, table, query string) {
	for ctx.Err() == nil {
		var n int64
		err := m.lease.fenced(ctx, func(tx *sql.Tx) error {
			res, err := tx.ExecContext(ctx, query, m.gc.retention.Microseconds(), gcBatch)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		})
		if err != nil {
			m.dbError("gc "+table, err)
			return
		}
		if n > 0 {
			m.metrics.gcDeleted.WithLabelValues(table).Add(float64(n))
			m.log.Info("garbage collected", "table", table, "rows", n)
		}
		if n < gcBatch {
			return
		}
	}
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
