// Command localcluster runs a whole multiconnect cluster on loopback, without
// Docker: a MariaDB (a private one in -dir, reused across runs, or the MySQL
// that WA_DB_HOSTNAME names), the simulated network, two masters, three
// coreapps and the gateway on :9090. It prints where to look and stops
// everything it started on Ctrl-C. It is a newcomer's first command:
//
//	go build -o bin/ ./... && bin/localcluster
//
// With -transport cloudapi the coreapps run transport-cloudapi against the
// Graph API test server (graphapid), whose webhooks reach the gateway's
// /cloudapi/webhook.
//
// The binaries are taken from the directory localcluster itself is in.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	dbconfig "github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/freeport"
	"github.com/multiconnect/multiconnect/internal/privatedb"
	"github.com/multiconnect/multiconnect/internal/shardmap"
)

type config struct {
	dir        string
	listen     string
	masters    int
	coreapps   int
	shards     int
	bin        string
	readyAfter time.Duration
	transport  string
}

// The Cloud API's demo credentials (graphapid accepts exactly these).
const (
	demoPhoneID     = "106540352242922"
	demoToken       = "EAAlocalcluster-demo-token"
	demoAppSecret   = "localcluster-app-secret"
	demoVerifyToken = "localcluster-verify-token"
)

func main() {
	var c config
	flag.StringVar(&c.dir, "dir", filepath.Join(os.TempDir(), "multiconnect-local"), "state: the private MariaDB's data, media and every process's log")
	flag.StringVar(&c.listen, "listen", "127.0.0.1:9090", "the gateway's address (the REST API)")
	flag.IntVar(&c.masters, "masters", 2, "number of masters")
	flag.IntVar(&c.coreapps, "coreapps", 3, "number of coreapps (shards + X survive X failures)")
	flag.IntVar(&c.shards, "shards", 1, "shard count of a new cluster: 1, 2, 4, 8, 16 or 32")
	flag.DurationVar(&c.readyAfter, "timeout", 60*time.Second, "give up if the gateway does not answer within this long")
	flag.StringVar(&c.transport, "transport", "simnet", "the coreapps' network: simnet (the simulated network) or cloudapi (the Cloud API transport against the Graph API test server)")
	flag.Parse()
	if c.transport != "simnet" && c.transport != "cloudapi" {
		fmt.Fprintf(os.Stderr, "localcluster: -transport %q: want simnet or cloudapi\n", c.transport)
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "localcluster: %v\n", err)
		os.Exit(1)
	}
}

// proc is one process the command started; it is stopped by PID.
type proc struct {
	name, addr, log string
	cmd             *exec.Cmd
	done            chan struct{}
}

func run(c config) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c.bin = filepath.Dir(self)
	need := []string{"caddy", "master", "coreapp", "simnetd", "transport-simnet"}
	if c.transport == "cloudapi" {
		need = append(need, "graphapid", "transport-cloudapi")
	}
	for _, b := range need {
		if _, err := os.Stat(filepath.Join(c.bin, b)); err != nil {
			return fmt.Errorf("%s is missing beside localcluster in %s: run `go build -o bin/ ./...` first", b, c.bin)
		}
	}
	logs, media := filepath.Join(c.dir, "logs"), filepath.Join(c.dir, "media")
	for _, d := range []string{logs, media} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	started := time.Now()

	db, err := database(c)
	if err != nil {
		return err
	}
	if db != nil {
		defer db.Stop()
	}
	var procs []*proc
	defer func() {
		fmt.Println("stopping", len(procs), "processes")
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	}()
	start := func(name, bin string, env []string, args ...string) (*proc, error) {
		p, err := launch(c, logs, name, bin, env, args...)
		if err == nil {
			procs = append(procs, p)
		}
		return p, err
	}

	simTCP, simHTTP := freeAddr(), freeAddr()
	if _, err := start("simnetd", "simnetd", nil, "-listen", simTCP, "-http", simHTTP); err != nil {
		return err
	}
	var cloudEnv, gatewayEnv []string
	graphURL := ""
	if c.transport == "cloudapi" {
		graphAddr := freeAddr()
		graphURL = "http://" + graphAddr
		if _, err := start("graphapid", "graphapid", nil, "-listen", graphAddr, "-phone-number-id", demoPhoneID,
			"-access-token", demoToken, "-app-secret", demoAppSecret, "-webhook-url", "http://"+c.listen+"/cloudapi/webhook",
			"-throughput", "80"); err != nil {
			return err
		}
		cloudEnv = []string{"MC_TRANSPORT=" + filepath.Join(c.bin, "transport-cloudapi"),
			"MC_CLOUDAPI_PHONE_NUMBER_ID=" + demoPhoneID, "MC_CLOUDAPI_ACCESS_TOKEN=" + demoToken, "MC_CLOUDAPI_BASE_URL=" + graphURL}
		gatewayEnv = []string{"MC_CLOUDAPI_PHONE_NUMBER_ID=" + demoPhoneID, "MC_CLOUDAPI_APP_SECRET=" + demoAppSecret,
			"MC_CLOUDAPI_VERIFY_TOKEN=" + demoVerifyToken}
	}
	node := func(role string, i int) (*proc, error) {
		addr := freeAddr()
		_, port, _ := net.SplitHostPort(addr)
		env := []string{"EXTERNAL_HOSTNAME=127.0.0.1", "MC_LISTEN=" + addr,
			"MC_SHARDS=" + strconv.Itoa(c.shards), "SIMNET_ADDR=" + simTCP, "MC_MEDIA_DIR=" + media,
			"COREAPP_EXTERNAL_PORTS=" + port, "MASTER_EXTERNAL_PORTS=" + port}
		env = append(env, cloudEnv...)
		p, err := start(fmt.Sprintf("%s%d", role, i), role, env)
		if p != nil {
			p.addr = addr
		}
		return p, err
	}
	for i := 1; i <= c.masters; i++ {
		if _, err := node("master", i); err != nil {
			return err
		}
	}
	for i := 1; i <= c.coreapps; i++ {
		if _, err := node("coreapp", i); err != nil {
			return err
		}
	}
	caddyfile := filepath.Join(c.dir, "Caddyfile")
	if err := os.WriteFile(caddyfile, []byte(fmt.Sprintf(gatewayConfig, c.listen)), 0o644); err != nil {
		return err
	}
	if _, err := start("gateway", "caddy", append([]string{"MC_MEDIA_DIR=" + media}, gatewayEnv...),
		"run", "--config", caddyfile, "--adapter", "caddyfile"); err != nil {
		return err
	}
	if err := waitServed(ctx, c); err != nil {
		return err
	}
	if err := waitGateway(ctx, c, procs); err != nil {
		return err
	}
	fmt.Printf(`
multiconnect is up in %v: the REST API is http://%s

  first login (the default password must be changed):
    curl -s -u admin:secret -X POST http://%[2]s/v1/users/login -d '{"new_password":"Secret-passw0rd"}'
  then, with the token it returns:
    curl -s -H "Authorization: Bearer $TOKEN" http://%[2]s/v1/health

  %s
  logs:                  %s/*.log
  database:              %s

Ctrl-C stops everything.
`, time.Since(started).Round(100*time.Millisecond), c.listen, networkDescription(c, simHTTP, graphURL), logs, dbDescription(db))
	// Stay up until interrupted; report a process that dies by itself.
	died := make(chan *proc, len(procs))
	for _, p := range procs {
		go func(p *proc) { <-p.done; died <- p }(p)
	}
	select {
	case <-ctx.Done():
		return nil
	case p := <-died:
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("%s exited; its log: %s", p.name, p.log)
	}
}

// gatewayConfig is Caddyfile.example's gateway with the admin API off, so
// several local clusters (or a test beside a developer's cluster) coexist.
const gatewayConfig = `{
	admin off
	auto_https off
	persist_config off
}

http://%s {
	multiconnect
}
`

// database makes WA_DB_* in this process's environment (which every node
// inherits) name the cluster's MySQL: the caller's when WA_DB_HOSTNAME is
// set, else a private MariaDB kept in dir/mariadb.
func database(c config) (*privatedb.Server, error) {
	if os.Getenv("WA_DB_HOSTNAME") != "" {
		return nil, nil
	}
	dir := filepath.Join(c.dir, "mariadb")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	srv, err := privatedb.Launch(privatedb.Options{Dir: dir})
	if err != nil {
		if errors.Is(err, privatedb.ErrMissing) {
			return nil, fmt.Errorf("%w, or point WA_DB_HOSTNAME, WA_DB_PORT, WA_DB_USERNAME and WA_DB_PASSWORD at a MySQL", err)
		}
		return nil, err
	}
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	return srv, nil
}

// waitServed waits until the primary master has created the schema and
// every shard has a primary coreapp: only then can a newcomer log in and
// send.
func waitServed(ctx context.Context, c config) error {
	cfg, err := dbconfig.FromEnv()
	if err != nil {
		return err
	}
	cfg.Wait = c.readyAfter
	db, err := dbconfig.Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	deadline := time.Now().Add(c.readyAfter)
	for {
		m, err := shardmap.Load(ctx, db)
		if err == nil && served(m) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no primary coreapp for every shard within %v (last: %v)", c.readyAfter, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func served(m *shardmap.Map) bool {
	for _, e := range m.Entries {
		if e.NodeID == "" {
			return false
		}
	}
	return len(m.Entries) > 0
}

func networkDescription(c config, simHTTP, graphURL string) string {
	if c.transport == "cloudapi" {
		return fmt.Sprintf("Graph API test server: %s/_test/state (webhooks to http://%s/cloudapi/webhook)", graphURL, c.listen)
	}
	return "simulated network API: http://" + simHTTP + "/v1/connections"
}

func dbDescription(db *privatedb.Server) string {
	if db == nil {
		return "your MySQL (WA_DB_* from the environment)"
	}
	return fmt.Sprintf("private MariaDB at %s (user %s, password %s; data in %s)", db.Addr(), db.User, db.Password, db.Dir)
}

func launch(c config, logs, name, bin string, env []string, args ...string) (*proc, error) {
	logPath := filepath.Join(logs, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(c.bin, bin), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Children die with this command even if it is SIGKILLed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

// stop asks the process to end (SIGTERM) and kills it after 5 s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// waitGateway polls the REST API until the gateway has joined the cluster:
// a login without credentials is refused with 401 rather than 503 (not
// ready). A process that exits meanwhile ends the wait.
func waitGateway(ctx context.Context, c config, procs []*proc) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(c.readyAfter)
	for {
		resp, err := client.Post("http://"+c.listen+"/v1/users/login", "application/json", nil)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
			err = fmt.Errorf("login answered %s", resp.Status)
		}
		for _, p := range procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited while the cluster was starting; its log: %s", p.name, p.log)
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the gateway was not ready on %s within %v (last: %v); logs in %s", c.listen, c.readyAfter, err, filepath.Dir(procs[0].log))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func freeAddr() string {
	p, err := freeport.Pick("127.0.0.1")
	if err != nil {
		return "127.0.0.1:0"
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
}
