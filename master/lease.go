package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/lease"
	"github.com/multiconnect/multiconnect/internal/monotime"
)

// ErrNotPrimary is returned by fenced writes of a master that does not hold
// the lease (API error 1017).
var ErrNotPrimary = errors.New("not the primary master")

// masterLease competes for the single master_lease row. Shaped like
// client-go's leader election: a ttl, a renew period of ttl/3 (so two renewals
// may fail before the lease is lost) and a retry period for secondaries short
// enough that a lapsed lease is taken within the ttl plus a fraction.
type masterLease struct {
	db     *sql.DB // fenced transactions
	own    *sql.DB // reserved connections: acquire, renew, release
	holder string  // this process: node id + incarnation, never reused
	addr   string
	ttl    time.Duration
	valid  lease.Validity
	epoch  int64 // meaningful while valid
	// committed is called after every fenced COMMIT: every change of the
	// cluster row is one, and the nodes are told at once.
	committed func()
	// wake makes a secondary try to acquire now (the primary stopped
	// answering), instead of when the lease it last read lapses.
	wake chan struct{}
}

// nudge makes a secondary try for the lease at once.
func (l *masterLease) nudge() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *masterLease) renewEvery() time.Duration { return l.ttl / 3 }

func (l *masterLease) retryEvery() time.Duration {
	r := l.ttl / 10
	if r > 500*time.Millisecond {
		r = 500 * time.Millisecond
	}
	return r
}

// tryAcquire takes the lease if it has lapsed on the database's clock.
// One statement, judged by rows affected (orchestrator's election_dao):
// no read-then-write race between two secondaries.
func (l *masterLease) tryAcquire(ctx context.Context) (bool, error) {
	sent := monotime.Now()
	res, err := l.own.ExecContext(ctx, `UPDATE master_lease
		SET holder = ?, holder_addr = ?, epoch = LAST_INSERT_ID(epoch + 1),
		    expires_at = NOW(6) + INTERVAL ? MICROSECOND, acquired_at = NOW(6)
		WHERE id = 1 AND expires_at <= NOW(6)`, l.holder, l.addr, l.ttl.Microseconds())
	if err != nil {
		return false, fmt.Errorf("acquire master lease: %w", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return false, nil
	}
	epoch, err := res.LastInsertId()
	if err != nil {
		return false, fmt.Errorf("acquire master lease: read epoch: %w", err)
	}
	l.epoch = epoch
	l.valid.Renewed(sent, l.ttl)
	return true, nil
}

// renew extends a held lease. lost is true only when the database says the
// lease is no longer ours; an error leaves the lease valid until it lapses
// locally.
func (l *masterLease) renew(ctx context.Context) (lost bool, err error) {
	sent := monotime.Now()
	res, err := l.own.ExecContext(ctx, `UPDATE master_lease SET expires_at = NOW(6) + INTERVAL ? MICROSECOND
		WHERE id = 1 AND holder = ? AND epoch = ? AND expires_at > NOW(6)`, l.ttl.Microseconds(), l.holder, l.epoch)
	if err != nil {
		return false, fmt.Errorf("renew master lease: %w", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return true, nil
	}
	l.valid.Renewed(sent, l.ttl)
	return false, nil
}

// release gives the lease up at shutdown so a secondary takes over at once.
func (l *masterLease) release(ctx context.Context) {
	l.own.ExecContext(ctx, `UPDATE master_lease SET expires_at = NOW(6) WHERE id = 1 AND holder = ? AND epoch = ?`, l.holder, l.epoch)
	l.valid.Drop()
}

// fenced runs fn in a transaction that commits only if this master still
// holds the lease at its epoch, proven at the end, under a shared lock on the
// lease row held until COMMIT: a takeover must write that row, so it either
// happened before the check (which then fails, and nothing of fn commits) or
// waits the few microseconds until COMMIT. The epoch only grows, so holding
// it at the end means holding it throughout.
//
// The check comes last, not first, so the lease row is never share-locked
// while fn waits for other rows (a frozen coreapp's fence on its shard_map
// row, say): the lease renewal, which updates that row, must never queue
// behind a lock held by someone else (README, "The failure model").
func (l *masterLease) fenced(ctx context.Context, fn func(tx *sql.Tx) error) error {
	if !l.valid.Valid() {
		return ErrNotPrimary
	}
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("fenced write: %w", err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM master_lease
		WHERE id = 1 AND holder = ? AND epoch = ? AND expires_at > NOW(6) LOCK IN SHARE MODE`, l.holder, l.epoch).Scan(&n); err != nil {
		return fmt.Errorf("fenced write: check lease: %w", err)
	}
	if n != 1 {
		return ErrNotPrimary
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("fenced write: commit: %w", err)
	}
	if l.committed != nil {
		l.committed()
	}
	return nil
}

// run keeps competing for or renewing the lease until ctx ends, calling
// onChange(true, epoch) when this master becomes primary and
// onChange(false, epoch) when it stops being primary.
func (l *masterLease) run(ctx context.Context, m *Master) {
	primary := false
	for {
		wait := l.retryEvery()
		qctx, cancel := context.WithTimeout(ctx, l.ttl/3)
		if !primary {
			ok, err := l.tryAcquire(qctx)
			if err != nil && ctx.Err() == nil {
				m.dbError("acquire lease", err)
			}
			if ok {
				primary = true
				m.becamePrimary(l.epoch)
				wait = l.renewEvery()
			} else if err == nil {
				wait = l.untilLapse(qctx)
			}
		} else {
			lost, err := l.renew(qctx)
			switch {
			case lost:
				m.log.Warn("master lease taken by another master", "epoch", l.epoch)
			case err != nil && ctx.Err() == nil:
				m.dbError("renew lease", err)
				if database.Transient(err) {
					wait = l.retryEvery()
				}
			}
			if lost || !l.valid.Valid() {
				primary = false
				l.valid.Drop()
				m.lostPrimary(l.epoch)
				wait = l.retryEvery()
			} else if err == nil {
				wait = l.renewEvery()
			}
		}
		cancel()
		// Wake up early enough to step down the instant the lease lapses
		// locally, whatever the renewal is doing.
		if primary {
			if r := l.valid.Remaining(); r < wait {
				wait = r
			}
		}
		select {
		case <-ctx.Done():
			if primary {
				rctx, c := context.WithTimeout(context.Background(), time.Second)
				l.release(rctx)
				c()
				m.lostPrimary(l.epoch)
			}
			return
		case <-l.wake:
		case <-time.After(wait):
		}
	}
}

// untilLapse is how long a secondary may sleep before trying again: until
// the lease it failed to take lapses on the database's clock (one read),
// rather than every retryEvery, which cost an idle secondary 2 statements
// a second. A primary's release or death is noticed sooner through nudge
// (its change feed breaks). Never less than retryEvery nor more than ttl.
func (l *masterLease) untilLapse(ctx context.Context) time.Duration {
	var us int64
	if err := l.own.QueryRowContext(ctx, `SELECT GREATEST(0, TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at))
		FROM master_lease WHERE id = 1`).Scan(&us); err != nil {
		return l.retryEvery()
	}
	return min(max(time.Duration(us)*time.Microsecond, l.retryEvery()), l.ttl)
}
