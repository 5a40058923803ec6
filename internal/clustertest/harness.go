// Package clustertest runs a real multiconnect cluster for tests: a private
// MariaDB, the simulated network, masters and coreapps as separate
// processes built from this repository, all on loopback. Tests kill, freeze
// and restart those processes by PID and ask the network what happened.
package clustertest

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/freeport"
	"github.com/multiconnect/multiconnect/internal/mariadbtest"
	"github.com/multiconnect/multiconnect/internal/pprofserve"
	"github.com/multiconnect/multiconnect/internal/privatedb"
	"github.com/multiconnect/multiconnect/internal/schema"
)

// DBName is the database the test clusters use.
const DBName = "multiconnect"

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// RepoRoot finds the module root from this file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Binaries builds master, coreapp, simnetd and transport-simnet, and the
// Cloud API's transport-cloudapi and graphapid, once per test process and
// returns the directory holding them.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "mc-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+"/", "./master", "./coreapp",
			"./plugins/simnet/cmd/simnetd", "./plugins/simnet/cmd/transport-simnet",
			"./plugins/cloudapi/cmd/transport-cloudapi", "./plugins/cloudapi/cmd/graphapid")
		cmd.Dir = RepoRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// FreePort returns a loopback port nobody listens on.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freeport.Pick("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Proc is one started process.
type Proc struct {
	Name    string
	Addr    string // its internal address (host:port), if it has one
	Cmd     *exec.Cmd
	LogPath string
	exited  chan struct{}
	state   *os.ProcessState
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process (by PID, never by name).
func (p *Proc) Signal(sig syscall.Signal) {
	if !p.Exited() {
		p.Cmd.Process.Signal(sig)
	}
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.exited
}

// Wait waits up to d for the process to end and returns its exit code (-1 on timeout).
func (p *Proc) Wait(d time.Duration) int {
	select {
	case <-p.exited:
		return p.state.ExitCode()
	case <-time.After(d):
		return -1
	}
}

// Log returns what the process wrote so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// Children returns the PIDs of the process's direct children (its plugin).
func (p *Proc) Children() []int { return ChildPIDs(p.Pid()) }

// ChildPIDs returns the direct children of pid. Linux lists a child under
// the thread that forked it, and a Go program forks from whichever thread
// runs the goroutine, so every thread is read.
func ChildPIDs(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, path := range tasks {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// Start runs bin with env (added to a minimal environment) and registers a
// SIGKILL of it, by PID, at the end of the test.
func Start(t testing.TB, dir, name, bin string, env []string, args ...string) *Proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	// MC_TRANSPORT_GOMAXPROCS set for the test reaches every node, so a
	// benchmark can compare the plugins' GOMAXPROCS; a node's own env,
	// added after, wins.
	if v, ok := os.LookupEnv("MC_TRANSPORT_GOMAXPROCS"); ok {
		cmd.Env = append(cmd.Env, "MC_TRANSPORT_GOMAXPROCS="+v)
	}
	cmd.Env = append(cmd.Env, env...)
	// MC_PPROF_DIR reaches every process, so a benchmark can profile
	// them all (internal/pprofserve); it is unset in every other run.
	if d := os.Getenv(pprofserve.EnvDir); d != "" {
		cmd.Env = append(cmd.Env, pprofserve.EnvDir+"="+d)
	}
	cmd.Stdout, cmd.Stderr = f, f
	// Die with the test process even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, LogPath: logPath, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		f.Close()
		p.state = cmd.ProcessState
		close(p.exited)
	}()
	t.Cleanup(func() {
		for _, c := range p.Children() {
			syscall.Kill(c, syscall.SIGKILL)
		}
		p.Kill()
	})
	return p
}

// Options shape a test cluster. Zero values take the defaults noted.
type Options struct {
	Masters     int           // 2
	Coreapps    int           // 3
	Shards      int           // 1
	Heartbeat   float64       // heartbeat_interval seconds, 0.25
	Unhealthy   float64       // unhealthy_interval seconds, 1
	Keepalive   time.Duration // the network's keepalive timeout, 250ms
	MasterLease time.Duration // MC_MASTER_LEASE, 2s
	MasterEnv   []string      // more environment for every master
	// DBLatency, when set, adds this much to every round trip between the
	// nodes and MariaDB (half each way, through DBProxy).
	DBLatency time.Duration
	// DBProxy puts a Proxy between every node and MariaDB (the nodes'
	// WA_DB_PORT names it), so a test can slow or cut that path.
	DBProxy bool
	// CoreappEnv, when set, gives coreapp i (0-based) more environment;
	// it runs once the network and MariaDB are up.
	CoreappEnv func(c *Cluster, i int) []string
	// DBClockFile, when set, runs MariaDB under libfaketime reading its
	// clock offset from this file (see privatedb.Options.ClockFile).
	DBClockFile string
	// CloudAPI runs the coreapps on transport-cloudapi against the Graph
	// API test server (graphapid, see cloudapi.go) instead of simnet.
	CloudAPI bool
	// GraphArgs are more graphapid flags.
	GraphArgs []string
}

// Cluster is a running test cluster.
type Cluster struct {
	T          testing.TB
	Opts       Options
	DB         *mariadbtest.Server
	SQL        *sql.DB
	Bin        string
	Dir        string
	Simnet     *Proc
	SimnetTCP  string
	SimnetHTTP string
	Masters    []*Proc
	Coreapps   []*Proc
	Secret     string
	DBProxy    *Proxy // nil unless Options.DBProxy or DBLatency
	// Graph and GraphURL: the Graph API test server (Options.CloudAPI).
	Graph    *Proc
	GraphURL string
	http     *http.Client
}

// New starts a cluster and waits until every shard is connected.
func New(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Masters == 0 {
		o.Masters = 2
	}
	if o.Coreapps == 0 {
		o.Coreapps = 3
	}
	if o.Shards == 0 {
		o.Shards = 1
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = 0.25
	}
	if o.Unhealthy == 0 {
		o.Unhealthy = 1
	}
	if o.Keepalive == 0 {
		o.Keepalive = 250 * time.Millisecond
	}
	if o.MasterLease == 0 {
		o.MasterLease = 2 * time.Second
	}
	c := &Cluster{T: t, Opts: o, Bin: Binaries(t), http: &http.Client{Timeout: 5 * time.Second}}
	dir, err := os.MkdirTemp("", "mc-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c.Dir = dir
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs()
		}
		os.RemoveAll(dir)
	})
	c.DB = mariadbtest.StartWith(t, privatedb.Options{ClockFile: o.DBClockFile})
	c.SQL = c.DB.Open(DBName)
	if o.DBProxy || o.DBLatency > 0 {
		c.DBProxy = StartProxy(t, c.DB.Addr())
		c.DBProxy.SetDelay(o.DBLatency / 2)
	}
	c.StartSimnet()
	if o.CloudAPI {
		c.StartGraphAPI(o.GraphArgs...)
	}
	for i := 0; i < o.Masters; i++ {
		c.StartMaster(o.MasterEnv...)
	}
	c.waitReady()
	c.SetSettings(o.Heartbeat, o.Unhealthy)
	for i := 0; i < o.Coreapps; i++ {
		var env []string
		if o.CoreappEnv != nil {
			env = o.CoreappEnv(c, i)
		}
		c.StartCoreapp(env...)
	}
	c.WaitAllShardsConnected(15 * time.Second)
	return c
}

// StartSimnet starts the simulated network.
func (c *Cluster) StartSimnet() {
	c.SimnetTCP = fmt.Sprintf("127.0.0.1:%d", FreePort(c.T))
	c.SimnetHTTP = fmt.Sprintf("127.0.0.1:%d", FreePort(c.T))
	c.Simnet = Start(c.T, c.Dir, "simnetd", filepath.Join(c.Bin, "simnetd"), nil,
		"-listen", c.SimnetTCP, "-http", c.SimnetHTTP, "-keepalive", c.Opts.Keepalive.String())
	c.eventually(10*time.Second, "simnet answers", func() error {
		_, err := c.simnetGet("/v1/info")
		return err
	})
}

// NodeEnv is the environment a node of this cluster gets.
func (c *Cluster) NodeEnv(listen int) []string {
	db := c.DB.Env()
	if c.DBProxy != nil {
		// Later entries win: exec keeps the last value of a duplicate key.
		db = append(db, "WA_DB_HOSTNAME=127.0.0.1", "WA_DB_PORT="+strconv.Itoa(c.DBProxy.Port()))
	}
	return append(db,
		"MC_DB_NAME="+DBName,
		"EXTERNAL_HOSTNAME=127.0.0.1",
		fmt.Sprintf("MC_LISTEN=127.0.0.1:%d", listen),
		"MC_MASTER_LEASE="+c.Opts.MasterLease.String(),
		"MC_SHARDS="+strconv.Itoa(c.Opts.Shards),
		"MC_DB_WAIT=5s",
		"MC_LIVENESS_INTERVAL=1s",
		"SIMNET_ADDR="+c.SimnetTCP,
		"MC_LOG_LEVEL=info",
		"MC_MEDIA_DIR="+filepath.Join(c.Dir, "media"),
	)
}

// StartMaster starts one more master.
func (c *Cluster) StartMaster(extraEnv ...string) *Proc {
	if c.Opts.CloudAPI {
		// Masters make the account calls (registration) through the
		// transport too.
		extraEnv = append(c.CloudEnv(), extraEnv...)
	}
	port := FreePort(c.T)
	p := Start(c.T, c.Dir, fmt.Sprintf("master%d", len(c.Masters)+1), filepath.Join(c.Bin, "master"),
		append(c.NodeEnv(port), extraEnv...))
	p.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	c.Masters = append(c.Masters, p)
	return p
}

// StartCoreapp starts one more coreapp.
func (c *Cluster) StartCoreapp(extraEnv ...string) *Proc {
	if c.Opts.CloudAPI {
		extraEnv = append(c.CloudEnv(), extraEnv...)
	}
	port := FreePort(c.T)
	p := Start(c.T, c.Dir, fmt.Sprintf("coreapp%d", len(c.Coreapps)+1), filepath.Join(c.Bin, "coreapp"),
		append(c.NodeEnv(port), append([]string{"MC_TRANSPORT=" + filepath.Join(c.Bin, "transport-simnet")}, extraEnv...)...))
	p.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	c.Coreapps = append(c.Coreapps, p)
	return p
}

// Restart starts p's program again with the same arguments and environment
// (so the same address), under a new log name, once p has ended. The caller
// replaces p with it wherever it keeps it.
func (c *Cluster) Restart(p *Proc, name string) *Proc {
	c.T.Helper()
	if !p.Exited() {
		c.T.Errorf("restart %s: still running", p.Name)
	}
	np := Start(c.T, c.Dir, name, p.Cmd.Path, p.Cmd.Env[2:], p.Cmd.Args[1:]...)
	np.Addr = p.Addr
	return np
}

func (c *Cluster) waitReady() {
	c.eventually(20*time.Second, "schema upgraded and cluster row created", func() error {
		v, err := schema.Version(context.Background(), c.SQL)
		if err != nil {
			return err
		}
		if v != schema.Latest() {
			return fmt.Errorf("schema version %d", v)
		}
		s, err := cluster.Secret(context.Background(), c.SQL)
		c.Secret = s
		return err
	})
}

// SetSettings writes heartbeat and unhealthy intervals through the primary
// master's API, as an operator would.
func (c *Cluster) SetSettings(hb, unhealthy float64) {
	c.PatchSettings(fmt.Sprintf(`{"heartbeat_interval":%g,"unhealthy_interval":%g}`, hb, unhealthy))
}

// Internal makes a request to a node's internal port with the cluster secret.
func (c *Cluster) Internal(method, addr, path, body string) (int, []byte, error) {
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set(cluster.SecretHeader, c.Secret)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, nil
}

// PrimaryMasterAddr reads the lease holder's address from the database.
func (c *Cluster) PrimaryMasterAddr() (string, error) {
	var addr string
	err := c.SQL.QueryRow(`SELECT holder_addr FROM master_lease WHERE id = 1 AND expires_at > NOW(6)`).Scan(&addr)
	if err != nil {
		return "", fmt.Errorf("no primary master: %w", err)
	}
	return addr, nil
}

// MasterByAddr finds a master process by address.
func (c *Cluster) MasterByAddr(addr string) *Proc {
	for _, p := range c.Masters {
		if p.Addr == addr {
			return p
		}
	}
	return nil
}

// CoreappByAddr finds a coreapp process by address.
func (c *Cluster) CoreappByAddr(addr string) *Proc {
	for _, p := range c.Coreapps {
		if p.Addr == addr {
			return p
		}
	}
	return nil
}

// eventually retries f every 20ms until it succeeds or d passes.
func (c *Cluster) eventually(d time.Duration, what string, f func() error) {
	c.T.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.T.Fatalf("%s: not within %v: %v", what, d, err)
}

// Eventually is eventually for tests.
func (c *Cluster) Eventually(d time.Duration, what string, f func() error) {
	c.T.Helper()
	c.eventually(d, what, f)
}

func (c *Cluster) simnetGet(path string) ([]byte, error) {
	resp, err := c.http.Get("http://" + c.SimnetHTTP + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("simnet %s: HTTP %d: %s", path, resp.StatusCode, b)
	}
	return b, nil
}

// SimnetJSON decodes a simnet HTTP API answer into v.
func (c *Cluster) SimnetJSON(path string, v any) error {
	b, err := c.simnetGet(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func (c *Cluster) dumpLogs() {
	procs := append([]*Proc{c.Simnet}, append(c.Masters, c.Coreapps...)...)
	for _, p := range procs {
		if p == nil {
			continue
		}
		c.T.Logf("---- %s (%s) log tail ----\n%s", p.Name, p.Addr, tailLines(p.Log(), 40))
	}
}

func tailLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewBufferString(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
