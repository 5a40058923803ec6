package claim

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Every write that only the shard's primary may make (accepted messages,
// callbacks) is fenced in its own transaction: the database, not this
// process's clock, decides whether the claim still holds.

// ErrFenced is Fence's answer when the claim is not held in the database.
var ErrFenced = errors.New("shard claim not held in the database")

// Fence proves, inside tx, that this coreapp still holds st's claim on the
// database's clock, and keeps it so until commit: a promotion must update
// the shard_map row and waits for the shared lock. It returns the shard count.
// Call it as late as possible: the locks last until COMMIT.
func (h *Holder) Fence(ctx context.Context, tx *sql.Tx, st Status) (shards int, err error) {
	// The join share-locks the cluster row as well: a change of the shard
	// count (which locks it for update) waits for this commit, and this one
	// checks recipients under the count it read.
	err = tx.QueryRowContext(ctx, `SELECT c.shards FROM shard_map s JOIN cluster c ON c.id = 1
		WHERE s.shard_id = ? AND s.node_id = ? AND s.incarnation = ? AND s.epoch = ? AND s.lease_expires > NOW(6)
		AND s.shard_id < c.shards LOCK IN SHARE MODE`, st.Shard, h.ID.ID, h.ID.Incarnation, st.Epoch).Scan(&shards)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, ErrFenced
	}
	if err != nil {
		return 0, fmt.Errorf("fence shard %d: %w", st.Shard, err)
	}
	return shards, nil
}
