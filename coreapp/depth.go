package main

import (
	"context"
	"time"

	"github.com/multiconnect/multiconnect/coreapp/internal/outbox"
)

// depthTimeout bounds the backlog count a scrape of /metrics makes.
const depthTimeout = time.Second

// measureDepth sets multiconnect_coreapp_outbox_depth and
// multiconnect_coreapp_callback_queue_depth: the shard's unsent messages
// and undelivered callbacks while this coreapp is its primary, 0
// otherwise. A growing outbox means the network (or the plugin) is not
// keeping up; a growing callback queue, that the webhook is not.
//
// It runs when /metrics is scraped, not on a timer: the two index range
// counts then cost nothing while nobody looks (an idle cluster's
// statements, README "Idle cost"), and a scrape always sees them fresh.
// A failed count leaves the last values.
func (c *Coreapp) measureDepth(ctx context.Context) {
	st := c.holder.Status()
	if !st.Primary {
		c.metrics.outboxDepth.Set(0)
		c.metrics.callbackDepth.Set(0)
		return
	}
	qctx, cancel := context.WithTimeout(ctx, depthTimeout)
	defer cancel()
	var unsent, undelivered int64
	err := c.db.QueryRowContext(qctx, `SELECT
		(SELECT COUNT(*) FROM messages WHERE shard_id = ? AND state = ?),
		(SELECT COUNT(*) FROM callbacks WHERE shard_id = ? AND delivered = 0)`,
		st.Shard, outbox.StateUnsent, st.Shard).Scan(&unsent, &undelivered)
	if err != nil {
		c.dbError("measure backlog", err)
		return
	}
	c.metrics.outboxDepth.Set(float64(unsent))
	c.metrics.callbackDepth.Set(float64(undelivered))
}
