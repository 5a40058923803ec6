package main

import (
	"context"
	"database/sql"
	"fmt"
)

// A shard's claim (who holds it, until when on the database's clock) lives
// in shard_claims since schema version 12, apart from the shard_map row
// that every group commit share-locks as its fence: the holder's renewals
// write only shard_claims, so they never wait for a group commit. A master
// changes both in one transaction, locking shard_map's row first.
//
// Coreapps of the previous version, still running during a rolling
// upgrade, take and renew their claims in shard_map: a claim's expiry is
// the later of the two (the one not renewed is past or older).
const (
	claimExpires   = `GREATEST(s.lease_expires, COALESCE(c.lease_expires, s.lease_expires))`
	claimRenewedAt = `GREATEST(COALESCE(s.renewed_at, c.renewed_at), COALESCE(c.renewed_at, s.renewed_at))`
)

// setClaim records in tx that node (at incarnation) holds shard at epoch
// until expires, an SQL expression taking args.
func setClaim(ctx context.Context, tx *sql.Tx, shard int, node string, incarnation, epoch int64, expires string, args ...any) error {
	q := `INSERT INTO shard_claims (shard_id, node_id, incarnation, epoch, lease_expires, renewed_at)
		VALUES (?, ?, ?, ?, ` + expires + `, NOW(6))
		ON DUPLICATE KEY UPDATE node_id = VALUES(node_id), incarnation = VALUES(incarnation), epoch = VALUES(epoch),
			lease_expires = VALUES(lease_expires), renewed_at = VALUES(renewed_at)`
	if _, err := tx.ExecContext(ctx, q, append([]any{shard, node, incarnation, epoch}, args...)...); err != nil {
		return fmt.Errorf("record the claim on shard %d: %w", shard, err)
	}
	return nil
}

// createShard adds shard's rows, unheld, if missing.
func createShard(ctx context.Context, tx *sql.Tx, shard int) error {
	for _, q := range []string{
		`INSERT IGNORE INTO shard_map (shard_id, lease_expires, connect_after) VALUES (?, '2000-01-01', '2000-01-01')`,
		`INSERT IGNORE INTO shard_claims (shard_id, lease_expires) VALUES (?, '2000-01-01')`,
	} {
		if _, err := tx.ExecContext(ctx, q, shard); err != nil {
			return fmt.Errorf("create shard %d: %w", shard, err)
		}
	}
	return nil
}
