package main

import (
	"context"
	"time"
)

// depthInterval is how often a primary counts its backlog for the
// outbox and callback queue gauges: two index range counts a second.
const depthInterval = time.Second

// measureDepth keeps multiconnect_coreapp_outbox_depth and
// multiconnect_coreapp_callback_queue_depth current: the shard's unsent
// messages and undelivered callbacks while this coreapp is its primary,
// 0 otherwise. A growing outbox means the network (or the plugin) is not
// keeping up; a growing callback queue, that the webhook is not.
func (c *Coreapp) measureDepth(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(depthInterval):
		}
		st := c.holder.status()
		if !st.Primary {
			c.metrics.outboxDepth.Set(0)
			c.metrics.callbackDepth.Set(0)
			continue
		}
		qctx, cancel := context.WithTimeout(ctx, depthInterval)
		var unsent, undelivered int64
		err := c.db.QueryRowContext(qctx, `SELECT
			(SELECT COUNT(*) FROM messages WHERE shard_id = ? AND state = ?),
			(SELECT COUNT(*) FROM callbacks WHERE shard_id = ? AND delivered = 0)`,
			st.Shard, stateUnsent, st.Shard).Scan(&unsent, &undelivered)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				c.dbError("measure backlog", err)
			}
			continue
		}
		c.metrics.outboxDepth.Set(float64(unsent))
		c.metrics.callbackDepth.Set(float64(undelivered))
	}
}
