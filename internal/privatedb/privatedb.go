// Package privatedb runs a private MariaDB server: its own data directory,
// its own port, no system tables or service touched. The tests start one
// per test (through mariadbtest), and the local cluster command starts one
// for a newcomer who has no MySQL. It needs the mariadbd and
// mariadb-install-db programs of Debian's mariadb-server package.
package privatedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/multiconnect/multiconnect/internal/freeport"
)

// ErrMissing means mariadbd is not installed.
var ErrMissing = errors.New("mariadbd not found: install it with `apt-get install -y mariadb-server`")

// Options say where the server lives.
type Options struct {
	// Dir holds the data directory, socket and logs. Empty: a new
	// temporary directory, removed by Remove.
	Dir string
	// Bind is the address to listen on. Default: 127.0.0.1.
	Bind string
	// Port to listen on. 0: a free port.
	Port int
	// User and Password of the account created for the cluster, with ALL
	// privileges from any host. Default: mc / mc-test-pw.
	User, Password string
	// ClockFile, when set, runs mariadbd under libfaketime (Debian's
	// faketime package) with its wall clock offset by what the file says,
	// re-read at every clock reading ("+0", "+5", "-3": seconds), so a test
	// can step the database's clock (NOW(6)) while it runs. The monotonic
	// clock is left alone: InnoDB's timers keep working.
	ClockFile string
}

// ErrNoFaketime means libfaketime is not installed.
var ErrNoFaketime = errors.New("libfaketime not found: install it with `apt-get install -y faketime`")

// faketimeLib finds Debian's multi-threaded libfaketime.
func faketimeLib() (string, error) {
	libs, _ := filepath.Glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
	if len(libs) == 0 {
		return "", ErrNoFaketime
	}
	return libs[0], nil
}

// Server is one running mariadbd.
type Server struct {
	Port      int
	Bind      string
	User      string
	Password  string
	Dir       string
	ClockFile string
	ownDir    bool
	cmd       *exec.Cmd
	exited    chan struct{}
}

// Launch initialises the data directory when it is new and starts the
// server, returning once it answers. The server dies with this process
// (PR_SET_PDEATHSIG), so a crashed test never leaves one behind.
func Launch(o Options) (*Server, error) {
	for _, bin := range []string{"mariadbd", "mariadb-install-db"} {
		if _, err := lookPath(bin); err != nil {
			return nil, fmt.Errorf("%s: %w", bin, ErrMissing)
		}
	}
	s := &Server{Port: o.Port, Bind: o.Bind, User: o.User, Password: o.Password, Dir: o.Dir, ClockFile: o.ClockFile}
	if s.Bind == "" {
		s.Bind = "127.0.0.1"
	}
	if s.User == "" {
		s.User, s.Password = "mc", "mc-test-pw"
	}
	if s.Dir == "" {
		dir, err := os.MkdirTemp("", "mc-mariadb-")
		if err != nil {
			return nil, fmt.Errorf("private MariaDB: %w", err)
		}
		s.Dir, s.ownDir = dir, true
	}
	if s.Port == 0 {
		p, err := freePort(s.Bind)
		if err != nil {
			s.Remove()
			return nil, err
		}
		s.Port = p
	}
	if err := s.install(); err != nil {
		s.Remove()
		return nil, err
	}
	if err := s.Start(); err != nil {
		s.Remove()
		return nil, err
	}
	return s, nil
}

func (s *Server) install() error {
	data := filepath.Join(s.Dir, "data")
	if _, err := os.Stat(filepath.Join(data, "mysql")); err == nil {
		return nil // initialised by an earlier run: reuse it
	}
	if err := os.MkdirAll(s.tmpDir(), 0o700); err != nil {
		return fmt.Errorf("private MariaDB: %w", err)
	}
	install, _ := lookPath("mariadb-install-db")
	cmd := exec.Command(install, "--no-defaults", "--datadir="+data, "--user=root",
		"--auth-root-authentication-method=normal", "--skip-test-db")
	cmd.Env = append(os.Environ(), "TMPDIR="+s.tmpDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("mariadb-install-db: %v\n%s", err, out)
	}
	init := fmt.Sprintf("CREATE USER IF NOT EXISTS '%s'@'%%' IDENTIFIED BY '%s';\nGRANT ALL ON *.* TO '%s'@'%%';\n", s.User, s.Password, s.User)
	if err := os.WriteFile(filepath.Join(s.Dir, "init.sql"), []byte(init), 0o600); err != nil {
		return fmt.Errorf("private MariaDB: %w", err)
	}
	return nil
}

// tmpDir is the server's own temporary directory. Servers sharing /tmp
// were seen failing to bootstrap ("Error on delete of
// '/tmp/#sql-temptable-...'") when several tests ran at once.
func (s *Server) tmpDir() string { return filepath.Join(s.Dir, "tmp") }

func lookPath(bin string) (string, error) {
	if p, err := exec.LookPath(bin); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin"} {
		p := filepath.Join(d, bin)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not in PATH", bin)
}

func freePort(host string) (int, error) {
	p, err := freeport.Pick(host)
	if err != nil {
		return 0, fmt.Errorf("private MariaDB: find a free port on %s: %w", host, err)
	}
	return p, nil
}

// Start runs mariadbd on the existing data directory and waits until it
// answers (30 s at most).
func (s *Server) Start() error {
	if err := os.MkdirAll(s.tmpDir(), 0o700); err != nil {
		return fmt.Errorf("private MariaDB: %w", err)
	}
	bin, _ := lookPath("mariadbd")
	logf, err := os.OpenFile(filepath.Join(s.Dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("private MariaDB: %w", err)
	}
	cmd := exec.Command(bin, "--no-defaults", "--user=root", "--datadir="+filepath.Join(s.Dir, "data"),
		"--socket="+filepath.Join(s.Dir, "sock"), "--port="+strconv.Itoa(s.Port), "--bind-address="+s.Bind,
		"--skip-name-resolve", "--skip-log-bin", "--log-error="+filepath.Join(s.Dir, "err.log"),
		"--pid-file="+filepath.Join(s.Dir, "pid"), "--init-file="+filepath.Join(s.Dir, "init.sql"),
		"--innodb-buffer-pool-size=64M", "--max-connections=500", "--tmpdir="+s.tmpDir())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if s.ClockFile != "" {
		lib, err := faketimeLib()
		if err != nil {
			logf.Close()
			return fmt.Errorf("start mariadbd: %w", err)
		}
		cmd.Env = append(os.Environ(), "LD_PRELOAD="+lib, "FAKETIME_TIMESTAMP_FILE="+s.ClockFile,
			"FAKETIME_NO_CACHE=1", "FAKETIME_DONT_FAKE_MONOTONIC=1")
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start mariadbd: %w", err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(s.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := s.Ping(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("mariadbd exited while starting: %s", s.ErrorLog(2000))
		default:
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("mariadbd not ready after 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// DSN returns a go-sql-driver DSN for database name (may be empty).
func (s *Server) DSN(name string) string {
	c := mysql.NewConfig()
	c.User, c.Passwd, c.Net, c.Addr, c.DBName = s.User, s.Password, "tcp", s.Addr(), name
	c.ParseTime, c.Loc, c.Timeout = true, time.UTC, 2*time.Second
	c.Params = map[string]string{"time_zone": "'+00:00'"}
	return c.FormatDSN()
}

// Addr is the server's address.
// PID is the running mariadbd's process id, 0 when it is not running.
func (s *Server) PID() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	select {
	case <-s.exited:
		return 0
	default:
		return s.cmd.Process.Pid
	}
}

func (s *Server) Addr() string { return net.JoinHostPort(s.Bind, strconv.Itoa(s.Port)) }

// Env is the db.env a node is given for this server.
func (s *Server) Env() []string {
	return []string{"WA_DB_ENGINE=MYSQL", "WA_DB_HOSTNAME=" + s.Bind, "WA_DB_PORT=" + strconv.Itoa(s.Port),
		"WA_DB_USERNAME=" + s.User, "WA_DB_PASSWORD=" + s.Password, "WA_DB_CONNECTION_IDLE_TIMEOUT=180000"}
}

// Open returns a connection pool to database name, created if missing.
func (s *Server) Open(name string) (*sql.DB, error) {
	if name != "" {
		boot, err := sql.Open("mysql", s.DSN(""))
		if err != nil {
			return nil, err
		}
		defer boot.Close()
		if _, err := boot.Exec("CREATE DATABASE IF NOT EXISTS `" + name + "` CHARACTER SET utf8mb4"); err != nil {
			return nil, fmt.Errorf("create database %s: %w", name, err)
		}
	}
	return sql.Open("mysql", s.DSN(name))
}

// Ping reports whether the server answers.
func (s *Server) Ping(ctx context.Context) error {
	db, err := sql.Open("mysql", s.DSN(""))
	if err != nil {
		return err
	}
	defer db.Close()
	return db.PingContext(ctx)
}

// Kill stops the server with SIGKILL (a crash: InnoDB recovers on restart).
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.exited
	}
}

// Stop shuts the server down cleanly (SIGTERM, then SIGKILL after 10 s).
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.Kill()
	}
}

// Remove stops the server and deletes its directory if Launch made it.
func (s *Server) Remove() {
	s.Stop()
	if s.ownDir {
		os.RemoveAll(s.Dir)
	}
}

// ErrorLog returns the last n bytes of the server's error log.
func (s *Server) ErrorLog(n int) string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "err.log"))
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
