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

// Fence proves, inside tx, that this coreapp is still the shard's holder at
// st's epoch, and keeps it so until commit: a promotion must update the
// shard_map row and waits for the shared lock. It returns the shard count.
// Call it as late as possible: the locks last until COMMIT.
//
// The fence checks who holds the shard (node, incarnation, epoch), not
// until when: the claim's expiry lives in shard_claims, which the fences
// never read, so a renewal never waits for a group commit (a shared lock
// here lasts until COMMIT, and an INSERT ... SELECT share-locks every row
// it reads, so the expiry could not be read here without the renewal
// waiting for it). That is safe because what the fence must exclude is a
// write by a holder that has been replaced, and only a promotion (or a
// release of the shard) replaces one: it updates this row, so it waits for
// every fence in flight and every later fence sees the new holder and
// fails. A write that commits after the old claim lapsed but before any
// promotion (a holder frozen between its own validity check, which it
// makes on its monotonic clock right before every action, and the
// statement) still comes from the only holder the database knows: its rows
// are stored under the shard like any other, and the successor, promoted
// only after that commit, sends them. The expiry guards the network
// connection (the plugin's deadline, connect_after), not these rows.
func (h *Holder) Fence(ctx context.Context, tx *sql.Tx, st Status) (shards int, err error) {
	// The join share-locks the cluster row as well: a change of the shard
	// count (which locks it for update) waits for this commit, and this one
	// checks recipients under the count it read. The cluster row is named
	// first: MariaDB reads (and locks) these one-row tables in that order,
	// the order a re-shard locks them in; the other order let a shrink and
	// a fence of a removed shard deadlock (1213).
	err = tx.QueryRowContext(ctx, `SELECT c.shards FROM cluster c JOIN shard_map s ON c.id = 1
		WHERE s.shard_id = ? AND s.node_id = ? AND s.incarnation = ? AND s.epoch = ?
		AND s.shard_id < c.shards LOCK IN SHARE MODE`, st.Shard, h.ID.ID, h.ID.Incarnation, st.Epoch).Scan(&shards)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, ErrFenced
	}
	if err != nil {
		return 0, fmt.Errorf("fence shard %d: %w", st.Shard, err)
	}
	return shards, nil
}
