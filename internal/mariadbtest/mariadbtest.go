// Package mariadbtest starts a private MariaDB for tests: a temporary data
// directory, a free loopback port, no system tables touched, removed when the
// test ends. It is how every cluster test meets a real database.
package mariadbtest

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Server is one running mariadbd.
type Server struct {
	Port     int
	User     string
	Password string
	dir      string
	cmd      *exec.Cmd
	exited   chan struct{}
	t        testing.TB
}

// Start boots a private server and registers its removal with t.Cleanup.
// It fails the test, naming the package to install, when mariadbd is missing.
func Start(t testing.TB) *Server {
	t.Helper()
	for _, bin := range []string{"mariadbd", "mariadb-install-db"} {
		if _, err := lookPath(bin); err != nil {
			t.Fatalf("%s not found: install it with `apt-get install -y mariadb-server` (tests need a real MariaDB)", bin)
		}
	}
	dir, err := os.MkdirTemp("", "mc-mariadb-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{User: "mc", Password: "mc-test-pw", dir: dir, t: t}
	t.Cleanup(s.remove)
	install, _ := lookPath("mariadb-install-db")
	out, err := exec.Command(install, "--no-defaults", "--datadir="+filepath.Join(dir, "data"), "--user=root",
		"--auth-root-authentication-method=normal", "--skip-test-db").CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	init := fmt.Sprintf("CREATE USER IF NOT EXISTS '%s'@'%%' IDENTIFIED BY '%s';\nGRANT ALL ON *.* TO '%s'@'%%';\n", s.User, s.Password, s.User)
	if err := os.WriteFile(filepath.Join(dir, "init.sql"), []byte(init), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Port = freePort(t)
	s.start()
	return s
}

func lookPath(bin string) (string, error) {
	if p, err := exec.LookPath(bin); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin"} {
		if p := filepath.Join(d, bin); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not in PATH", bin)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (s *Server) start() {
	s.t.Helper()
	bin, _ := lookPath("mariadbd")
	logf, err := os.OpenFile(filepath.Join(s.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(bin, "--no-defaults", "--user=root", "--datadir="+filepath.Join(s.dir, "data"),
		"--socket="+filepath.Join(s.dir, "sock"), "--port="+strconv.Itoa(s.Port), "--bind-address=127.0.0.1",
		"--skip-name-resolve", "--skip-log-bin", "--log-error="+filepath.Join(s.dir, "err.log"),
		"--pid-file="+filepath.Join(s.dir, "pid"), "--init-file="+filepath.Join(s.dir, "init.sql"),
		"--innodb-buffer-pool-size=64M", "--max-connections=500")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start mariadbd: %v", err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(s.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		db, _ := sql.Open("mysql", s.DSN(""))
		err := db.Ping()
		db.Close()
		if err == nil {
			return
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(filepath.Join(s.dir, "err.log"))
			s.t.Fatalf("mariadbd exited while starting: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("mariadbd not ready after 30s: %v", err)
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

// Addr is the server's loopback address.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// Env is the db.env a node would be given for this server.
func (s *Server) Env() []string {
	return []string{"WA_DB_ENGINE=MYSQL", "WA_DB_HOSTNAME=127.0.0.1", "WA_DB_PORT=" + strconv.Itoa(s.Port),
		"WA_DB_USERNAME=" + s.User, "WA_DB_PASSWORD=" + s.Password, "WA_DB_CONNECTION_IDLE_TIMEOUT=180000"}
}

// Open returns a connection pool to database name, created if missing.
func (s *Server) Open(name string) *sql.DB {
	s.t.Helper()
	if name != "" {
		boot, err := sql.Open("mysql", s.DSN(""))
		if err != nil {
			s.t.Fatal(err)
		}
		if _, err := boot.Exec("CREATE DATABASE IF NOT EXISTS `" + name + "`"); err != nil {
			s.t.Fatal(err)
		}
		boot.Close()
	}
	db, err := sql.Open("mysql", s.DSN(name))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { db.Close() })
	return db
}

// Kill stops the server with SIGKILL (a crash: InnoDB recovers on restart).
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.exited
	}
}

// Restart kills the server and starts it again on the same port and data.
func (s *Server) Restart(down time.Duration) {
	s.Kill()
	time.Sleep(down)
	s.start()
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

func (s *Server) remove() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Signal(syscall.SIGKILL)
			<-s.exited
		}
	}
	if s.t.Failed() {
		if log, err := os.ReadFile(filepath.Join(s.dir, "err.log")); err == nil && len(log) > 0 {
			s.t.Logf("mariadbd error log (tail):\n%s", tail(log, 2000))
		}
	}
	os.RemoveAll(s.dir)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
