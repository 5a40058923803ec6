package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/go-sql-driver/mysql"
)

// stalledAfter is how long a transaction may leave the server idle, its
// client sending nothing, before the primary master may end it to let a
// promotion through. Every transaction of ours sends its statements back to
// back (a round trip apart), so one idle for a second belongs to a process
// that is frozen, swapped out or cut off: the holder the master is
// replacing, typically, whose shared locks on its shard_map row and the
// cluster row would otherwise last until it wakes (MySQL keeps an idle
// transaction for wait_timeout, 8 hours).
const stalledAfter = time.Second

// promoteAttempts bounds how often one promotion retries after finding its
// rows locked; each retry first ends stalled transactions.
const promoteAttempts = 8

// noNowait reports whether err says the server does not know NOWAIT (the
// first time only), and logs that promotions now wait for a busy row.
func (m *Master) noNowait(err error) bool {
	if !m.nowait.Unsupported(err) {
		return false
	}
	m.log.Warn("the server does not know FOR UPDATE NOWAIT (MySQL 5.7): promotions wait up to innodb_lock_wait_timeout for a busy row")
	return true
}

// killStalled ends the connections whose transaction holds locks in our
// database and whose client has been silent for stalledAfter, and returns
// how many it ended. Killing rolls the transaction back: it commits
// nothing, and its client, if it ever wakes, sees an error (a request
// answered 503, retried with its idempotency key). So a wrong guess costs
// one retried request, never safety. It needs the PROCESS privilege
// (information_schema.INNODB_TRX) and, for other users' sessions,
// CONNECTION_ADMIN; the nodes share one user in db.env.
func (m *Master) killStalled(ctx context.Context) (int, error) {
	// MariaDB counts idle time in milliseconds (TIME_MS); MySQL only in
	// whole seconds, truncated, so TIME >= 2 is what proves one second.
	idleMS, least := "p.TIME_MS", stalledAfter.Milliseconds()
	if m.stalledBySeconds.Load() {
		idleMS, least = "p.TIME * 1000", (int64(stalledAfter/time.Second)+1)*1000
	}
	rows, err := m.db.QueryContext(ctx, `SELECT t.trx_mysql_thread_id, `+idleMS+`, t.trx_started
		FROM information_schema.INNODB_TRX t JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
		WHERE t.trx_query IS NULL AND t.trx_lock_structs > 0 AND p.COMMAND = 'Sleep'
		AND p.DB = DATABASE() AND p.ID <> CONNECTION_ID() AND `+idleMS+` >= ?`, least)
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1054 && !m.stalledBySeconds.Load() { // no TIME_MS: MySQL
		m.stalledBySeconds.Store(true)
		return m.killStalled(ctx)
	}
	if err != nil {
		return 0, fmt.Errorf("find stalled transactions: %w", err)
	}
	type stalled struct {
		id      int64
		idleMS  float64
		started time.Time
	}
	var found []stalled
	for rows.Next() {
		var s stalled
		if err := rows.Scan(&s.id, &s.idleMS, &s.started); err != nil {
			rows.Close()
			return 0, fmt.Errorf("find stalled transactions: %w", err)
		}
		found = append(found, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("find stalled transactions: %w", err)
	}
	killed := 0
	for _, s := range found {
		_, err := m.db.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(s.id, 10))
		if errors.As(err, &me) && me.Number == 1094 { // ended meanwhile
			continue
		}
		if err != nil {
			return killed, fmt.Errorf("end stalled transaction of connection %d: %w", s.id, err)
		}
		killed++
		m.log.Warn("ended a stalled transaction that blocked a promotion", "connection", s.id,
			"idle", (time.Duration(s.idleMS) * time.Millisecond).String(), "started", s.started)
	}
	return killed, nil
}
