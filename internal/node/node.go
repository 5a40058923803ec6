// Package node is what masters and coreapps share about themselves: who they
// are on the network (EXTERNAL_HOSTNAME and the external port, as in the
// original), their registration row, and their liveness writes.
package node

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/internal/release"
	"github.com/multiconnect/multiconnect/internal/settings"
)

// Roles as stored in nodes.role.
const (
	RoleMaster  = "master"
	RoleCoreapp = "coreapp"
)

// Identity is one running process.
type Identity struct {
	ID          string // host:port other nodes reach it at; the nodes row key
	Role        string
	Hostname    string // EXTERNAL_HOSTNAME
	Container   string // the container id inside Docker, else the host name
	Incarnation int64  // random per process start
	ListenAddr  string // what it binds
}

// FromEnv builds the identity. listenEnv names the bind-address variable
// (MC_LISTEN) and portsEnv the external-ports variable (COREAPP_EXTERNAL_PORTS
// or MASTER_EXTERNAL_PORTS, "6250" or "6250-6253": the first port is this
// node's internal API as reachable from other machines).
func FromEnv(role, defaultListen, portsEnv string) (Identity, error) {
	id := Identity{Role: role, ListenAddr: envOr("MC_LISTEN", defaultListen)}
	_, lport, err := net.SplitHostPort(id.ListenAddr)
	if err != nil {
		return id, fmt.Errorf("MC_LISTEN=%q is not host:port", id.ListenAddr)
	}
	if p, err := strconv.Atoi(lport); err != nil || p < 1 || p > 65535 {
		return id, fmt.Errorf("MC_LISTEN=%q: %q is not a port", id.ListenAddr, lport)
	}
	port := lport
	if v := os.Getenv(portsEnv); v != "" {
		first := strings.TrimSpace(strings.SplitN(v, "-", 2)[0])
		if p, err := strconv.Atoi(first); err != nil || p < 1 || p > 65535 {
			return id, fmt.Errorf("%s=%q is not a port or a range such as 6250-6253", portsEnv, v)
		}
		port = first
	}
	host, _ := os.Hostname()
	id.Container = host
	id.Hostname = envOr("EXTERNAL_HOSTNAME", host)
	if id.Hostname == "" {
		return id, fmt.Errorf("EXTERNAL_HOSTNAME is not set and the host name is unknown")
	}
	id.ID = net.JoinHostPort(id.Hostname, port)
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return id, fmt.Errorf("incarnation: %w", err)
	}
	id.Incarnation = int64(binary.BigEndian.Uint64(b[:]) >> 1)
	return id, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Register upserts the node's row with a fresh incarnation and liveness.
func Register(ctx context.Context, db *sql.DB, id Identity, keepaliveMS int64) error {
	_, err := db.ExecContext(ctx, `INSERT INTO nodes (id, role, hostname, container, incarnation, keepalive_ms, version, started_at, last_seen)
		VALUES (?, ?, ?, ?, ?, ?, ?, NOW(6), NOW(6))
		ON DUPLICATE KEY UPDATE role = VALUES(role), hostname = VALUES(hostname), container = VALUES(container),
			incarnation = VALUES(incarnation), keepalive_ms = VALUES(keepalive_ms), version = VALUES(version),
			started_at = NOW(6), last_seen = NOW(6)`,
		id.ID, id.Role, id.Hostname, id.Container, id.Incarnation, keepaliveMS, release.Version)
	if err != nil {
		return fmt.Errorf("register node %s: %w", id.ID, err)
	}
	return nil
}

// Touch writes liveness (database-based monitoring). It touches only this
// incarnation's row, so a replaced process cannot claim to be alive.
func Touch(ctx context.Context, db *sql.DB, id Identity) error {
	res, err := db.ExecContext(ctx, `UPDATE nodes SET last_seen = NOW(6) WHERE id = ? AND incarnation = ?`, id.ID, id.Incarnation)
	if err != nil {
		return fmt.Errorf("liveness of %s: %w", id.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("liveness of %s: row taken over by another process at the same address", id.ID)
	}
	return nil
}

// EnvDuration reads a Go duration ("10s", "250ms") from the environment.
func EnvDuration(name string, def time.Duration) (time.Duration, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return def, fmt.Errorf("%s=%q is not a positive duration such as 10s or 250ms", name, v)
	}
	return d, nil
}

// LogLevel is the level of the process's Logger. It starts at
// MC_LOG_LEVEL (info when unset) and follows the cluster's log_level
// setting afterwards (settings.Cache.FollowLevel).
var LogLevel = new(slog.LevelVar)

// LogFloor is MC_LOG_LEVEL as a level, or nil when it is unset: the node
// then logs exactly at the cluster's setting.
func LogFloor() (*slog.Level, error) {
	v := os.Getenv("MC_LOG_LEVEL")
	if v == "" {
		return nil, nil
	}
	l, err := settings.ParseLevel(v)
	if err != nil {
		return nil, fmt.Errorf("MC_LOG_LEVEL: %w", err)
	}
	return &l, nil
}

// FollowSettings makes LogLevel follow the cluster's log_level and
// verbose_logging settings as cache sees them, with MC_LOG_LEVEL as a floor
// (see settings.Cache.FollowLevel). It fails on an MC_LOG_LEVEL it cannot read.
func FollowSettings(cache *settings.Cache, log *slog.Logger) error {
	floor, err := LogFloor()
	if err != nil {
		return err
	}
	cache.FollowLevel(LogLevel, floor, log)
	return nil
}

// Logger is the process's structured logger: JSON on stderr, tagged with
// the node's role and address so merged cluster logs stay readable. Its
// level is LogLevel, changed at run time by the settings.
func Logger(id Identity) *slog.Logger {
	if floor, _ := LogFloor(); floor != nil {
		LogLevel.Set(*floor)
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: LogLevel})).
		With("role", id.Role, "node", id.ID)
}
