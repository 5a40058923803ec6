package database

import (
	"errors"
	"sync/atomic"

	"github.com/go-sql-driver/mysql"
)

// Nowait remembers whether the server knows FOR UPDATE NOWAIT (MySQL 8.0.1+
// and MariaDB 10.3+ do; MySQL 5.7 answers a syntax error, 1064). Without it
// a locking read waits the session's innodb_lock_wait_timeout instead.
type Nowait struct{ unknown atomic.Bool }

// Clause is " NOWAIT", or "" once the server was found not to know it.
func (n *Nowait) Clause() string {
	if n.unknown.Load() {
		return ""
	}
	return " NOWAIT"
}

// Unsupported reports whether err is the first sign that the server does
// not know NOWAIT; from then on Clause is empty. It is true once, so the
// caller logs it and tries again without the clause.
func (n *Nowait) Unsupported(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1064 && !n.unknown.Swap(true)
}
