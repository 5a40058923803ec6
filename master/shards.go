package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/monotime"
	"github.com/multiconnect/multiconnect/internal/openapi"
	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/inbound"
)

// errTooFewCoreapps refuses a shard count the cluster cannot serve.
var errTooFewCoreapps = errors.New("too few healthy coreapps")

// getShards is GET /v1/account/shards.
func (m *Master) getShards(w http.ResponseWriter, r *http.Request) {
	st, err := cluster.ReadState(r.Context(), m.db)
	if err != nil {
		apierror.Write(w, apierror.GenericError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"account": []map[string]any{{"shards": st.Shards}}, "meta": meta()})
}

// postShards is POST /v1/account/shards {"shards": N}: the shard count
// changes online, in one fenced transaction (see reshard).
func (m *Master) postShards(w http.ResponseWriter, r *http.Request) {
	// The document's ShardsRequest says what is required and the counts
	// allowed (1008 missing, 1009 invalid, 1025 not JSON).
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	if err != nil {
		apierror.Write(w, apierror.RequestNotValid, "cannot read the body: "+err.Error())
		return
	}
	if inv := openapi.Validate("ShardsRequest", body); inv != nil {
		apierror.Write(w, inv.Code, inv.Details)
		return
	}
	var req struct {
		Shards int64 `json:"shards"`
	}
	if err := json.Unmarshal(body, &req); err != nil || !shard.ValidCount(int(req.Shards)) {
		apierror.Write(w, apierror.ParameterInvalid, fmt.Sprintf("shards must be one of %v", shard.Counts))
		return
	}
	n := req.Shards
	from, err := m.reshard(r.Context(), int(n))
	switch {
	case errors.Is(err, errTooFewCoreapps):
		apierror.Write(w, apierror.ParameterInvalid, err.Error())
		return
	case errors.Is(err, ErrNotPrimary):
		apierror.Write(w, apierror.NotPrimaryMaster, err.Error())
		return
	case err != nil:
		apierror.Write(w, apierror.GenericError, err.Error())
		return
	}
	if from != int(n) {
		m.log.Info("shard count changed", "from", from, "to", n)
		m.metrics.reshards.Inc()
		m.metrics.mapChanges.Inc()
		m.mon.nudge()
	}
	writeJSON(w, http.StatusCreated, map[string]any{"account": []map[string]any{{"shards": n, "previous": from}}, "meta": meta()})
}

// healthyCoreapps counts the coreapps that can hold a shard (peer.healthy,
// the test a promotion candidate passes too).
func (m *Master) healthyCoreapps() int {
	s := m.settings.Get()
	recent := 3 * s.Heartbeat()
	if recent < time.Second {
		recent = time.Second
	}
	now := monotime.Now()
	m.mon.mu.Lock()
	defer m.mon.mu.Unlock()
	n := 0
	for _, p := range m.mon.peers {
		if p.healthy(now, recent) {
			n++
		}
	}
	return n
}

// reshard changes the shard count to n and returns the old count. Within
// one transaction fenced by the master lease:
//
//   - the cluster row is locked FOR UPDATE. Every group commit of accepted
//     messages holds it in share mode (with its shard claim) and checks the
//     recipient's shard under that count, so no message is accepted under
//     the old count once this commits, and none committed under it is
//     missed below;
//   - unsent messages are relabelled to their shard under the new count,
//     so each recipient's backlog moves whole, in seq order, to the one
//     shard that now sends for it. A batch the old shard had in flight may
//     reach the network again from the new one: the network drops it by id,
//     and what arrives first still arrives in seq order, so no recipient's
//     order changes;
//   - undelivered callbacks move the same way, renumbered after every
//     callback stored so far (see moveUndelivered);
//   - a removed shard's row is released: its holder's next renewal fails
//     and it steps down. The row keeps its epoch and a connect_after past
//     the old claim and keepalive, so a later holder of that shard id
//     connects at a higher epoch and never beside the old one;
//   - unacknowledged Cloud API inbound events move to their contact's new
//     shard's stream, leaving moved rows in their old places
//     (inbound.RelayoutTx);
//   - new shards get rows (or their old ones back, unassigned), which the
//     monitor fills with warm secondaries like any unassigned shard.
func (m *Master) reshard(ctx context.Context, n int) (int, error) {
	// The change locks the cluster row, then the shard rows, while group
	// commits take a shard row and then the cluster row, each shared: the
	// two can deadlock, and InnoDB then rolls one back whole. A rolled-back
	// change changed nothing, so it is simply tried again.
	var from int
	var err error
	for attempt := 1; ; attempt++ {
		from, err = m.reshardTx(ctx, n)
		if attempt == reshardAttempts || ctx.Err() != nil || !(database.Deadlock(err) || database.LockBusy(err)) {
			return from, err
		}
		m.log.Info("re-shard rolled back by a lock conflict; trying again", "shards", n, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
		}
	}
}

// reshardAttempts bounds reshard's tries after lock conflicts.
const reshardAttempts = 5

// reshardTx is one try of reshard, in one fenced transaction.
func (m *Master) reshardTx(ctx context.Context, n int) (int, error) {
	var from int
	err := m.lease.fenced(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT shards FROM cluster WHERE id = 1 FOR UPDATE`).Scan(&from); err != nil {
			return fmt.Errorf("reshard: %w", err)
		}
		if from == n {
			return nil
		}
		if have := m.healthyCoreapps(); have < n {
			return fmt.Errorf("%w: %d shards need %d healthy coreapps and %d are healthy; start more coreapps first (shards + 1 to survive a failure)",
				errTooFewCoreapps, n, n, have)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE cluster SET shards = ? WHERE id = 1`, n); err != nil {
			return fmt.Errorf("reshard: %w", err)
		}
		var kaMS int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(keepalive_ms), 0) FROM nodes`).Scan(&kaMS); err != nil {
			return fmt.Errorf("reshard: %w", err)
		}
		// The claim goes with the holder (renewals then find it gone); its
		// expiry stays, for connect_after.
		if _, err := tx.ExecContext(ctx, `UPDATE shard_map s LEFT JOIN shard_claims c ON c.shard_id = s.shard_id SET
				s.connect_after = GREATEST(s.connect_after, `+claimExpires+` + INTERVAL ? MICROSECOND),
				s.node_id = NULL, s.incarnation = 0, s.master_epoch = ?, c.node_id = NULL, c.incarnation = 0
			WHERE s.shard_id >= ?`, kaMS*1000, m.lease.epoch, n); err != nil {
			return fmt.Errorf("reshard: release removed shards: %w", err)
		}
		for s := from; s < n; s++ {
			if err := createShard(ctx, tx, s); err != nil {
				return fmt.Errorf("reshard: %w", err)
			}
		}
		if err := moveUnsent(ctx, tx, n); err != nil {
			return fmt.Errorf("reshard: %w", err)
		}
		if err := moveUndelivered(ctx, tx, n); err != nil {
			return fmt.Errorf("reshard: %w", err)
		}
		// The Cloud API transport's unacknowledged inbound webhooks move
		// the same way (empty under the simulated network). The gateway
		// stores them under the count it reads share-locking the cluster
		// row held here, so none is stored under the old count after this.
		if _, err := inbound.RelayoutTx(ctx, tx, n); err != nil {
			return fmt.Errorf("reshard: %w", err)
		}
		return cluster.BumpMap(ctx, tx)
	})
	return from, err
}

// moveBatch bounds the seqs one statement names when rows move.
const moveBatch = 1000

// moveUnsent relabels the unsent messages whose recipient now belongs to
// another shard. The shard is computed here with shard.For rather than in
// SQL (REGEXP_REPLACE needs MySQL 8.0.4), over the unsent rows only, which
// the messages_unsent index finds without reading the sent ones: the
// transaction stays as short as the backlog, however many messages are
// stored. The rows are locked (FOR UPDATE) until commit, so no outbox marks
// one sent meanwhile.
func moveUnsent(ctx context.Context, tx *sql.Tx, n int) error {
	moves, err := movedRows(ctx, tx, `SELECT seq, recipient, shard_id FROM messages WHERE state = 0 ORDER BY seq FOR UPDATE`, n)
	if err != nil {
		return fmt.Errorf("find unsent messages: %w", err)
	}
	return inBatches(moves, func(to int, seqs []any) error {
		if _, err := tx.ExecContext(ctx, `UPDATE messages SET shard_id = ? WHERE seq IN (`+placeholders(len(seqs))+`)`,
			append([]any{to}, seqs...)...); err != nil {
			return fmt.Errorf("move unsent messages to shard %d: %w", to, err)
		}
		return nil
	})
}

// moveUndelivered moves the undelivered callbacks whose recipient now
// belongs to another shard, renumbered: each is inserted again (in seq
// order, so a recipient's order holds) and the old row deleted. A
// surviving shard's dispatcher loads only callbacks past the last seq it
// loaded, so a callback moved in with its old, lower seq would never be
// delivered. The new seqs are above every callback stored so far, and no
// callback is stored while this runs (storing one share-locks the cluster
// row this transaction holds for update), so none is committed below them
// later. A moving recipient's undelivered callbacks all move together and
// its later ones are stored after the commit, so its order is kept. Their
// network event number belonged to the old shard, so it is cleared.
func moveUndelivered(ctx context.Context, tx *sql.Tx, n int) error {
	moves, err := movedRows(ctx, tx, `SELECT seq, recipient, shard_id FROM callbacks WHERE delivered = 0 ORDER BY seq FOR UPDATE`, n)
	if err != nil {
		return fmt.Errorf("find undelivered callbacks: %w", err)
	}
	return inBatches(moves, func(to int, seqs []any) error {
		in := placeholders(len(seqs))
		if _, err := tx.ExecContext(ctx, `INSERT INTO callbacks (shard_id, net_seq, recipient, kind, payload, attempts, created_at)
			SELECT ?, NULL, recipient, kind, payload, attempts, created_at FROM callbacks WHERE seq IN (`+in+`) ORDER BY seq`,
			append([]any{to}, seqs...)...); err != nil {
			return fmt.Errorf("move undelivered callbacks to shard %d: %w", to, err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM callbacks WHERE seq IN (`+in+`)`, seqs...); err != nil {
			return fmt.Errorf("move undelivered callbacks to shard %d: %w", to, err)
		}
		return nil
	})
}

// movedRows runs query (seq, recipient, shard_id in seq order) and returns,
// per new shard under count n, the seqs of the rows that must move there,
// ascending. A recipient without digits was never accepted; it stays.
func movedRows(ctx context.Context, tx *sql.Tx, query string, n int) (map[int][]any, error) {
	rows, err := tx.QueryContext(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	moves := map[int][]any{}
	for rows.Next() {
		var seq int64
		var recipient string
		var from int
		if err := rows.Scan(&seq, &recipient, &from); err != nil {
			return nil, err
		}
		if to, err := shard.For(recipient, n); err == nil && to != from {
			moves[to] = append(moves[to], seq)
		}
	}
	return moves, rows.Err()
}

// inBatches calls move for each new shard's seqs, moveBatch at a time, in
// ascending order.
func inBatches(moves map[int][]any, move func(to int, seqs []any) error) error {
	for to, seqs := range moves {
		for len(seqs) > 0 {
			k := min(len(seqs), moveBatch)
			if err := move(to, seqs[:k]); err != nil {
				return err
			}
			seqs = seqs[k:]
		}
	}
	return nil
}

// placeholders returns "?,?,...,?" with k marks.
func placeholders(k int) string {
	return strings.TrimSuffix(strings.Repeat("?,", k), ",")
}
