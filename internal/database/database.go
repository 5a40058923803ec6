// Package database opens the cluster's MySQL from the original product's
// environment (db.env) and turns driver failures into one-line reasons an
// operator can act on.
package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Config is what db.env says, plus the database name (ours, MC_DB_NAME).
type Config struct {
	Engine      string        // WA_DB_ENGINE: only MYSQL
	Host        string        // WA_DB_HOSTNAME
	Port        int           // WA_DB_PORT, default 3306
	User        string        // WA_DB_USERNAME
	Password    string        // WA_DB_PASSWORD
	IdleTimeout time.Duration // WA_DB_CONNECTION_IDLE_TIMEOUT in ms, default 180000
	Name        string        // MC_DB_NAME, default "multiconnect"
	// Wait is how long Open keeps retrying an unreachable server at start
	// (MC_DB_WAIT, Go duration, default 30s): in a compose file the database
	// may come up after the nodes. A refused login is never retried.
	Wait time.Duration
	// MaxOpen caps the pool's connections (see budget.go; 0: DefaultPool).
	MaxOpen int
	// LockWait is the session's innodb_lock_wait_timeout, rounded up to
	// whole seconds (the server's unit; 0: LockWait). Every transaction of
	// ours is a few primary-key statements, so a row lock held longer
	// than this belongs to a stalled holder; waiting for it must end.
	LockWait time.Duration
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// FromEnv reads the configuration, refusing values that cannot work.
func FromEnv() (Config, error) {
	c := Config{
		Engine:   strings.ToUpper(envOr("WA_DB_ENGINE", "MYSQL")),
		Host:     envOr("WA_DB_HOSTNAME", "127.0.0.1"),
		User:     envOr("WA_DB_USERNAME", "root"),
		Password: os.Getenv("WA_DB_PASSWORD"),
		Name:     envOr("MC_DB_NAME", "multiconnect"),
		Port:     3306, IdleTimeout: 180 * time.Second, Wait: 30 * time.Second,
	}
	if c.Engine != "MYSQL" {
		return c, fmt.Errorf("WA_DB_ENGINE=%s is not supported: use MYSQL", c.Engine)
	}
	if v := os.Getenv("WA_DB_PORT"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p < 1 || p > 65535 {
			return c, fmt.Errorf("WA_DB_PORT=%q is not a port number", v)
		}
		c.Port = p
	}
	if v := os.Getenv("WA_DB_CONNECTION_IDLE_TIMEOUT"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms < 0 {
			return c, fmt.Errorf("WA_DB_CONNECTION_IDLE_TIMEOUT=%q is not a number of milliseconds", v)
		}
		c.IdleTimeout = time.Duration(ms) * time.Millisecond
	}
	if v := os.Getenv("MC_DB_WAIT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return c, fmt.Errorf("MC_DB_WAIT=%q is not a duration such as 30s", v)
		}
		c.Wait = d
	}
	if !nameRE.MatchString(c.Name) {
		return c, fmt.Errorf("MC_DB_NAME=%q: use letters, digits and _ only", c.Name)
	}
	return c, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Addr is host:port of the server.
func (c Config) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

func (c Config) dsn(db string) string {
	m := mysql.NewConfig()
	m.User, m.Passwd, m.Net, m.Addr, m.DBName = c.User, c.Password, "tcp", c.Addr(), db
	m.ParseTime = true
	m.Loc = time.UTC
	m.Timeout = 3 * time.Second
	// Expiry is always judged by the server's NOW(6); pin the session zone so
	// a DST change on the DB host cannot move stored deadlines.
	m.Params = map[string]string{"time_zone": "'+00:00'",
		"innodb_lock_wait_timeout": strconv.Itoa(c.lockWaitSeconds())}
	m.InterpolateParams = true // one round trip per statement instead of prepare+exec
	return m.FormatDSN()
}

// Open connects, creating the database if it does not exist. It retries an
// unreachable server for c.Wait, then fails with a one-line reason.
func Open(ctx context.Context, c Config) (*sql.DB, error) {
	deadline := time.Now().Add(c.Wait)
	for {
		db, err := open(ctx, c)
		if err == nil {
			return db, nil
		}
		if !Transient(err) || time.Now().After(deadline) {
			return nil, Explain(c, err)
		}
		select {
		case <-ctx.Done():
			return nil, Explain(c, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func open(ctx context.Context, c Config) (*sql.DB, error) {
	boot, err := sql.Open("mysql", c.dsn(""))
	if err != nil {
		return nil, err
	}
	defer boot.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := boot.ExecContext(pctx, "CREATE DATABASE IF NOT EXISTS `"+c.Name+"` CHARACTER SET utf8mb4"); err != nil {
		return nil, err
	}
	db, err := sql.Open("mysql", c.dsn(c.Name))
	if err != nil {
		return nil, err
	}
	db.SetConnMaxIdleTime(c.IdleTimeout)
	configure(db, c, c.MaxOpen)
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// OpenReserved opens a second, small pool of n connections to the same
// database (created by Open first): work that must never queue behind
// request traffic for a connection (lease and claim renewals) gets its own.
func OpenReserved(ctx context.Context, c Config, n int) (*sql.DB, error) {
	db, err := sql.Open("mysql", c.dsn(c.Name))
	if err != nil {
		return nil, Explain(c, err)
	}
	configure(db, c, n)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, Explain(c, err)
	}
	return db, nil
}

func configure(db *sql.DB, c Config, maxOpen int) {
	if maxOpen <= 0 {
		maxOpen = DefaultPool
	}
	db.SetConnMaxIdleTime(c.IdleTimeout)
	db.SetMaxOpenConns(maxOpen)
	db.SetMaxIdleConns(maxOpen)
}

func (c Config) lockWaitSeconds() int {
	d := c.LockWait
	if d <= 0 {
		d = LockWait
	}
	return int((d + time.Second - 1) / time.Second)
}

// LockBusy reports whether err is a row lock that could not be had: NOWAIT
// (MariaDB answers it 1205, MySQL 3572) or a lock wait that timed out.
func LockBusy(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1205 || me.Number == 3572)
}

// Deadlock reports whether err is InnoDB's deadlock (1213): the server rolled
// the transaction back whole, so it may be run again.
func Deadlock(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1213
}

// Transient reports whether err may pass by itself (server down or
// restarting, connection reset), as opposed to a refused login or bad SQL.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1040, 1053, 1205, 1213, 3572, 2002, 2003, 2006, 2013: // too many conns, shutdown, lock wait, deadlock, NOWAIT, gone away
			return true
		}
		return false
	}
	return true // network errors, driver.ErrBadConn, timeouts
}

// Explain turns a connection failure into a sentence naming the setting to fix.
func Explain(c Config, err error) error {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1045:
			return fmt.Errorf("MySQL at %s refused user %q: check WA_DB_USERNAME and WA_DB_PASSWORD (%s)", c.Addr(), c.User, me.Message)
		case 1044, 1142:
			return fmt.Errorf("MySQL user %q may not use database %q: grant it ALL on %s.* (%s)", c.User, c.Name, c.Name, me.Message)
		}
		return fmt.Errorf("MySQL at %s: %s", c.Addr(), me.Message)
	}
	return fmt.Errorf("cannot reach MySQL at %s (WA_DB_HOSTNAME/WA_DB_PORT): %v", c.Addr(), err)
}
