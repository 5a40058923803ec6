package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/monotime"
)

var errMapChanged = errors.New("shard map changed under evaluation")

// promote hands shard s to cand in one fenced transaction, then tells cand.
//
// The new holder may serve requests at once but may connect to the network
// only after connect_after, set past the old holder's last possible moment
// on the network: its claim's expiry (which its own deadline precedes) plus
// the network's keepalive timeout (after which the network has dropped a
// connection whose holder froze). That is what keeps one connection per shard
// even when the old holder is alive, partitioned or paused, not dead.
//
// The claim's expiry is on the database's clock, which may step (NTP, a VM
// restored): so connect_after is also never before the old holder's end as
// this master judges it on its own monotonic clock (heldFor).
func (m *Master) promote(ctx context.Context, s shardRow, cand *peer, reason string) error {
	unhealthy := m.settings.Get().Unhealthy()
	seen, observed := m.mon.claim(s.shard)
	var epoch int64
	var sinceRenewal time.Duration // of the previous holder: how long the shard went unclaimed
	// The old holder, frozen inside an accept or callback transaction,
	// share-locks its shard_map row and the cluster row until it wakes. So
	// the row is asked for with NOWAIT, and when it (or the cluster row,
	// after the session's innodb_lock_wait_timeout) is busy, stalled
	// transactions are ended and the promotion tried again.
	var err error
	for attempt := 1; ; attempt++ {
		err = m.lease.fenced(ctx, func(tx *sql.Tx) error {
			return m.promoteTx(ctx, tx, s, cand, reason, unhealthy, seen, observed, &epoch, &sinceRenewal)
		})
		if !database.LockBusy(err) || attempt == promoteAttempts || ctx.Err() != nil {
			break
		}
		n, kerr := m.killStalled(ctx)
		if kerr != nil && attempt == 1 {
			m.log.Warn("promotion blocked by a lock, and stalled transactions could not be ended", "shard", s.shard, "err", kerr)
		}
		if n == 0 {
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	if err != nil {
		return err
	}
	m.log.Info("promoted coreapp", "shard", s.shard, "coreapp", cand.id, "epoch", epoch, "previous", s.node, "reason", reason)
	m.metrics.failover(reason)
	m.metrics.mapChanges.Inc()
	if s.node != "" && sinceRenewal >= 0 {
		m.metrics.failoverSeconds.Observe(sinceRenewal.Seconds())
	}
	go m.notify(cand.id, "/internal/promote", map[string]any{"shard": s.shard, "epoch": epoch, "incarnation": cand.incarnation}, unhealthy)
	if s.node != "" && s.node != cand.id {
		// Best effort: the old holder also finds out at its next renewal.
		go m.notify(s.node, "/internal/demote", map[string]any{"shard": s.shard, "epoch": epoch}, time.Second)
	}
	return nil
}

// promoteTx is promote's fenced transaction.
func (m *Master) promoteTx(ctx context.Context, tx *sql.Tx, s shardRow, cand *peer, reason string, unhealthy time.Duration,
	seen claimSeen, observed bool, epoch *int64, sinceRenewal *time.Duration) error {
	var node string
	var cur, us, leaseUS int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(node_id, ''), epoch
		FROM shard_map WHERE shard_id = ? FOR UPDATE`+m.nowait.Clause(), s.shard).Scan(&node, &cur); err != nil {
		if m.noNowait(err) {
			return m.promoteTx(ctx, tx, s, cand, reason, unhealthy, seen, observed, epoch, sinceRenewal)
		}
		return fmt.Errorf("promote shard %d: %w", s.shard, err)
	}
	if node != s.node || cur != s.epoch {
		return errMapChanged
	}
	// The claim, locked after the shard_map row (every writer of both
	// takes them in this order): a renewal in flight (one statement, which
	// the server finishes whatever its client does) commits first, and none
	// lands after this reads the expiry; a holder frozen inside its take
	// of the claim is a stalled transaction, ended like the fences'.
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(TIMESTAMPDIFF(MICROSECOND, `+claimRenewedAt+`, NOW(6)), -1),
			TIMESTAMPDIFF(MICROSECOND, '2000-01-01', `+claimExpires+`)
		FROM shard_map s LEFT JOIN shard_claims c ON c.shard_id = s.shard_id
		WHERE s.shard_id = ? FOR UPDATE`, s.shard).Scan(&us, &leaseUS); err != nil {
		return fmt.Errorf("promote shard %d: read its claim: %w", s.shard, err)
	}
	// The database's clock, read in a statement of its own so a wait
	// for the row lock above does not blur the step check.
	now := clockRead{sent: monotime.Now()}
	if err := tx.QueryRowContext(ctx, `SELECT TIMESTAMPDIFF(MICROSECOND, '2000-01-01', NOW(6))`).Scan(&now.dbUS); err != nil {
		return fmt.Errorf("promote shard %d: read the database's clock: %w", s.shard, err)
	}
	now.recv = monotime.Now()
	// hold: how long the old holder may still be connected beyond
	// NOW(6), judged here; stepErr: how far the database's clock may
	// have stepped unnoticed since this master saw the claim.
	var hold, stepErr time.Duration
	if node != "" {
		hold, stepErr = oldHolderEnd(seen, observed, cur, leaseUS, now, unhealthy)
	}
	*sinceRenewal = time.Duration(us) * time.Microsecond
	var busy int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM shard_map WHERE node_id = ? AND shard_id <> ?`, cand.id, s.shard).Scan(&busy); err != nil {
		return fmt.Errorf("promote shard %d: %w", s.shard, err)
	}
	if busy > 0 {
		return fmt.Errorf("promote shard %d: %s already holds a shard", s.shard, cand.id)
	}
	// The network's keepalive as reported by the transports of the old
	// holder and the candidate; the larger is the safe one.
	var kaMS int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(keepalive_ms), 0) FROM nodes WHERE id IN (?, ?)`, s.node, cand.id).Scan(&kaMS); err != nil {
		return fmt.Errorf("promote shard %d: %w", s.shard, err)
	}
	if kaMS < cand.keepaliveMS {
		kaMS = cand.keepaliveMS
	}
	// lease_expires is written to shard_map as well, for a coreapp of the
	// previous version (it takes and renews its claim there) during a
	// rolling upgrade.
	if _, err := tx.ExecContext(ctx, `UPDATE shard_map SET
			connect_after = GREATEST(NOW(6), connect_after, CAST('2000-01-01' AS DATETIME(6)) + INTERVAL ? MICROSECOND, NOW(6) + INTERVAL ? MICROSECOND),
			lease_expires = NOW(6) + INTERVAL ? MICROSECOND,
			node_id = ?, incarnation = ?, epoch = epoch + 1, assigned_at = NOW(6), master_epoch = ?
		WHERE shard_id = ?`, leaseUS+kaMS*1000+stepErr.Microseconds(), hold.Microseconds()+kaMS*1000, unhealthy.Microseconds(),
		cand.id, cand.incarnation, m.lease.epoch, s.shard); err != nil {
		return fmt.Errorf("promote shard %d: %w", s.shard, err)
	}
	*epoch = s.epoch + 1
	if err := setClaim(ctx, tx, s.shard, cand.id, cand.incarnation, *epoch, `NOW(6) + INTERVAL ? MICROSECOND`, unhealthy.Microseconds()); err != nil {
		return fmt.Errorf("promote shard %d: %w", s.shard, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO failovers (shard_id, old_node, new_node, epoch, reason, master_epoch, at)
		VALUES (?, NULLIF(?, ''), ?, ?, ?, ?, NOW(6))`, s.shard, s.node, cand.id, *epoch, reason, m.lease.epoch); err != nil {
		return fmt.Errorf("promote shard %d: audit: %w", s.shard, err)
	}
	return cluster.BumpMap(ctx, tx)
}

// oldHolderEnd says how to bound the old holder's connection. While the
// database's clock has not stepped forward since this master saw the claim
// (checked between that round's reading and now's, and that round's and the
// one before), lease_expires + keepalive is right up to stepErr, the largest
// step that could have gone unnoticed (a few round trips): hold is 0.
// Otherwise hold is heldFor, judged on this master's clock alone.
func oldHolderEnd(seen claimSeen, observed bool, epoch, leaseUS int64, now clockRead, unhealthy time.Duration) (hold, stepErr time.Duration) {
	if observed && seen.epoch == epoch && seen.readErr >= 0 {
		if e := frameErr(seen.read, now); e >= 0 {
			return 0, seen.readErr + e
		}
	}
	return heldFor(seen, observed, epoch, leaseUS, unhealthy), 0
}

// heldFor is how much longer, on this master's monotonic clock, the holder
// of a claim (epoch, lease_expires as leaseUS) may still be connected: its
// validity ends within unhealthy_interval of its last renewal, which this
// master saw at seen.at or later. A claim not seen at this epoch, or renewed
// since the last look, may have been renewed just now; one handed back is
// over (its holder confirmed the disconnect first).
func heldFor(seen claimSeen, observed bool, epoch, leaseUS int64, unhealthy time.Duration) time.Duration {
	switch {
	case !observed || seen.epoch != epoch || leaseUS > seen.leaseUS:
		return unhealthy
	case leaseUS < seen.leaseUS || seen.handedBack:
		return 0
	}
	return max(0, unhealthy-time.Duration(monotime.Now()-seen.at))
}

// notify posts to a coreapp, retrying for up to within. The coreapp also
// polls the shard map, so a lost notification costs one poll, not the shard.
func (m *Master) notify(node, path string, body map[string]any, within time.Duration) {
	b, _ := json.Marshal(body)
	deadline := time.Now().Add(within)
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+node+path, bytes.NewReader(b))
		req.Header.Set(cluster.SecretHeader, m.secret())
		req.Header.Set("Content-Type", "application/json")
		resp, err := m.mon.client.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 300 {
				return
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			m.log.Warn("could not notify coreapp", "coreapp", node, "path", path, "err", err)
			return
		}
		time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
	}
}
