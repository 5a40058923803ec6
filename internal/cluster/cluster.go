// Package cluster holds what every node shares through the database: the
// cluster row (shard count, version counters) and the cluster secret that
// admits members to internal ports.
package cluster

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"database/sql"
	"encoding/hex"
	"fmt"
)

// SecretHeader carries the cluster secret on every internal request. Anyone
// who can read the database is a member, so the secret lives there; it keeps
// out whoever can reach a node's port but not the database.
const SecretHeader = "X-Multiconnect-Cluster"

// UserHeader names the user a request came from. Only the gateway sets it
// (it drops a client's copy), and a node believes it only on a request that
// carries the cluster secret: idempotency keys are scoped by it.
const UserHeader = "X-Multiconnect-User"

// State is the cluster row.
type State struct {
	Shards          int
	SettingsVersion int64
	MapVersion      int64
}

// ReadState reads the cluster row.
func ReadState(ctx context.Context, q Querier) (State, error) {
	var s State
	err := q.QueryRowContext(ctx, `SELECT shards, settings_version, map_version FROM cluster WHERE id = 1`).
		Scan(&s.Shards, &s.SettingsVersion, &s.MapVersion)
	if err != nil {
		return s, fmt.Errorf("read cluster state: %w", err)
	}
	return s, nil
}

// Querier is what *sql.DB, *sql.Conn and *sql.Tx share.
type Querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Init creates the cluster row with shards and a fresh secret if missing.
// Only the primary master calls it, inside its fenced transaction.
func Init(ctx context.Context, q Querier, shards int) error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("cluster secret: %w", err)
	}
	_, err := q.ExecContext(ctx, `INSERT IGNORE INTO cluster (id, shards, secret, settings_version, map_version) VALUES (1, ?, ?, 1, 1)`,
		shards, hex.EncodeToString(b))
	if err != nil {
		return fmt.Errorf("init cluster row: %w", err)
	}
	return nil
}

// Secret reads the cluster secret.
func Secret(ctx context.Context, q Querier) (string, error) {
	var s string
	if err := q.QueryRowContext(ctx, `SELECT secret FROM cluster WHERE id = 1`).Scan(&s); err != nil {
		return "", fmt.Errorf("read cluster secret: %w", err)
	}
	return s, nil
}

// Authorized compares a presented secret in constant time.
func Authorized(presented, secret string) bool {
	return secret != "" && subtle.ConstantTimeCompare([]byte(presented), []byte(secret)) == 1
}

// BumpMap records that the shard map changed, so pollers reload it.
func BumpMap(ctx context.Context, q Querier) error {
	_, err := q.ExecContext(ctx, `UPDATE cluster SET map_version = map_version + 1 WHERE id = 1`)
	if err != nil {
		return fmt.Errorf("bump shard map version: %w", err)
	}
	return nil
}

// BumpSettings records that settings changed, so pollers reload them.
func BumpSettings(ctx context.Context, q Querier) error {
	_, err := q.ExecContext(ctx, `UPDATE cluster SET settings_version = settings_version + 1 WHERE id = 1`)
	if err != nil {
		return fmt.Errorf("bump settings version: %w", err)
	}
	return nil
}
