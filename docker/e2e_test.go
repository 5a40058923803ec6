// Package docker holds the images and compose files; this test proves them
// on the machine's Docker engine, the way an operator uses them: build the
// images, put db.env beside multiconnect-compose.yml, `up`, log in, send,
// then lose the primary coreapp twice (docker kill, docker network
// disconnect) and see the shard served again with no overlap.
package docker

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/clustertest"
	"github.com/multiconnect/multiconnect/internal/privatedb"
)

const (
	version = "e2e-test"
	// Fast failure detection, set through the API once the cluster is up.
	heartbeat, unhealthy = 0.5, 2.0
	// simnetd's default keepalive, as the compose file runs it.
	keepalive = time.Second
)

// stack is one running compose project and what the test needs of it.
type stack struct {
	t       *testing.T
	dir     string
	project string
	network string
	env     []string
	web     string // the gateway, host:port on loopback
	simnet  string // the simulated network's API, host:port on loopback
	token   string
	http    *http.Client
	sql     *sql.DB // the cluster's database, to read the shard map
}

func TestSingleServerCompose(t *testing.T) {
	if os.Getenv("MC_SKIP_DOCKER") == "1" {
		t.Skip("MC_SKIP_DOCKER=1")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Fatalf("this test needs a running Docker engine and docker-compose (set MC_SKIP_DOCKER=1 to skip it): %v\n%s", err, out)
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Fatalf("docker-compose not found: apt-get install -y docker-compose (or set MC_SKIP_DOCKER=1)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	s := &stack{t: t, http: &http.Client{Timeout: 5 * time.Second}}
	s.buildImages(ctx)
	s.up(ctx)

	// Log in as the original's admin, then make failure detection fast.
	s.login()
	code, body := s.api("PATCH", "/v1/settings/application", fmt.Sprintf(`{"heartbeat_interval":%g,"unhealthy_interval":%g}`, heartbeat, unhealthy))
	if code != 200 {
		t.Fatalf("PATCH settings: %d %s", code, body)
	}
	// A claim taken under the old 30 s never shrinks under its holder
	// (renewals only extend it), so the new length governs failover only
	// once the old expiry has passed: wait for that on the database.
	s.eventually(45*time.Second, "shard claims renewed at the new unhealthy_interval", func() error {
		var left float64
		err := s.sql.QueryRow(`SELECT COALESCE(MAX(TIMESTAMPDIFF(MICROSECOND, NOW(6), lease_expires)), 0) / 1e6 FROM shard_claims WHERE node_id IS NOT NULL`).Scan(&left)
		if err != nil {
			return err
		}
		if left > unhealthy {
			return fmt.Errorf("a claim still runs %.1f s", left)
		}
		return nil
	})

	// The images' version reaches /v1/support, for every node.
	code, body = s.api("GET", "/v1/support", "")
	var sup struct {
		Support struct {
			Version string
			Nodes   []struct{ Node, Version string }
		}
	}
	if code != 200 || json.Unmarshal([]byte(body), &sup) != nil || sup.Support.Version != version || len(sup.Support.Nodes) != 5 {
		t.Fatalf("GET /v1/support: %d %s, want version %s and 5 nodes", code, body, version)
	}
	for _, n := range sup.Support.Nodes {
		if n.Version != version {
			t.Errorf("node %s runs version %q, want %q", n.Node, n.Version, version)
		}
	}
	if label := strings.TrimSpace(s.docker(ctx, "inspect", "-f", `{{index .Config.Labels "org.opencontainers.image.version"}}`, s.container("waweb"))); label != version {
		t.Errorf("the gateway image's version label is %q, want %q", label, version)
	}

	sent := s.sendMessages("before", 10)
	s.eventually(60*time.Second, "every container reports healthy", func() error {
		for _, svc := range []string{"waweb", "master1", "master2", "wacore1", "wacore2", "wacore3", "simnet"} {
			st := strings.TrimSpace(s.docker(ctx, "inspect", "-f", "{{.State.Health.Status}}", s.container(svc)))
			if st != "healthy" {
				return fmt.Errorf("%s is %s", svc, st)
			}
		}
		return nil
	})
	first := s.openConnection(0)
	t.Logf("shard 0 on %s (epoch %d); %d messages accepted", first.Node, first.Epoch, len(sent))

	// 1. docker kill the primary coreapp's container.
	killed := time.Now()
	s.docker(ctx, "kill", s.container(first.Node))
	next := s.waitServedAgain(first, killed)
	sent = append(sent, s.sendMessages("after-kill", 10)...)

	// 2. Cut the new primary off the network: it must step down by itself,
	// and its successor connect only after it certainly has.
	cut := time.Now()
	s.docker(ctx, "network", "disconnect", s.network, s.container(next.Node))
	s.waitServedAgain(next, cut)
	sent = append(sent, s.sendMessages("after-partition", 10)...)

	s.requireDelivered(sent)
	var v struct {
		Count int `json:"count"`
	}
	s.simnetJSON("/v1/violations", &v)
	if v.Count != 0 {
		t.Errorf("the network counted %d overlapping connections for one shard", v.Count)
	}
}

func (s *stack) buildImages(ctx context.Context) {
	s.t.Helper()
	started := time.Now()
	cmd := exec.CommandContext(ctx, "bash", "docker/build-images.sh", version)
	cmd.Dir = clustertest.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Fatalf("build images: %v\n%s", err, out)
	}
	s.t.Logf("images built in %v", time.Since(started).Round(time.Second))
}

// up runs the single-server compose file as an operator with their own
// MySQL would: db.env points at a MariaDB on the host (started here on the
// gateway address of a Docker network this test creates), the db service
// is left out, and nothing is pulled.
func (s *stack) up(ctx context.Context) {
	t := s.t
	s.dir = t.TempDir()
	s.project = fmt.Sprintf("mce2e%d", os.Getpid())
	s.network = s.project + "_net"
	s.docker(ctx, "network", "create", s.network)
	t.Cleanup(func() { exec.Command("docker", "network", "rm", s.network).Run() })
	gw := strings.TrimSpace(s.docker(ctx, "network", "inspect", s.network, "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}"))
	if net.ParseIP(gw) == nil {
		t.Fatalf("network %s has no gateway address: %q", s.network, gw)
	}
	db, err := privatedb.Launch(privatedb.Options{Bind: gw})
	if err != nil {
		t.Fatalf("MariaDB on %s: %v", gw, err)
	}
	t.Cleanup(db.Remove)
	if s.sql, err = db.Open("multiconnect"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.sql.Close() })

	compose, err := os.ReadFile(filepath.Join(clustertest.RepoRoot(), "docker", "multiconnect-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(s.dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("multiconnect-compose.yml", string(compose))
	write("db.env", strings.Join(db.Env(), "\n")+"\n")
	// The one thing the shipped file cannot know: the network the test made.
	write("network.yml", fmt.Sprintf("version: \"3.7\"\nnetworks:\n  default:\n    external: true\n    name: %s\n", s.network))

	webPort, simPort := clustertest.FreePort(t), clustertest.FreePort(t)
	s.web, s.simnet = fmt.Sprintf("127.0.0.1:%d", webPort), fmt.Sprintf("127.0.0.1:%d", simPort)
	s.env = append(os.Environ(), "COMPOSE_PROJECT_NAME="+s.project, "MC_VERSION="+version,
		"WA_WEB_PORT="+strconv.Itoa(webPort), "SIMNET_API_PORT="+strconv.Itoa(simPort))
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := s.compose(context.Background(), "logs", "--no-color", "--tail", "40")
			t.Logf("docker-compose logs:\n%s", out)
		}
		if out, err := s.compose(context.Background(), "down", "-v", "--remove-orphans", "-t", "5"); err != nil {
			t.Errorf("docker-compose down: %v\n%s", err, out)
		}
	})
	// Naming the services leaves the db service out without pulling its
	// image (--scale db=0, fine where a registry is reachable, still pulls).
	if out, err := s.compose(ctx, "up", "-d", "waweb", "master1", "master2", "wacore1", "wacore2", "wacore3", "simnet"); err != nil {
		t.Fatalf("docker-compose up: %v\n%s", err, out)
	}
	// The gateway has joined the cluster when a login without credentials
	// is refused (401) rather than not ready (503).
	s.eventually(90*time.Second, "the gateway is ready", func() error {
		resp, err := s.http.Post("http://"+s.web+"/v1/users/login", "application/json", nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("login without credentials: %s", resp.Status)
		}
		return nil
	})
	s.eventually(60*time.Second, "shard 0 is connected", func() error {
		_, err := s.open(0)
		return err
	})
}

func (s *stack) compose(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker-compose", append([]string{"-f", "multiconnect-compose.yml", "-f", "network.yml"}, args...)...)
	cmd.Dir, cmd.Env = s.dir, s.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (s *stack) docker(ctx context.Context, args ...string) string {
	s.t.Helper()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		s.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// container maps a node id (EXTERNAL_HOSTNAME:port, the compose service
// name) to its container.
func (s *stack) container(node string) string {
	s.t.Helper()
	service, _, _ := strings.Cut(node, ":")
	out, err := s.compose(context.Background(), "ps", "-q", service)
	id := strings.TrimSpace(out)
	if err != nil || id == "" {
		s.t.Fatalf("no container for %s: %v %s", node, err, out)
	}
	return id
}

func (s *stack) login() {
	s.t.Helper()
	req, _ := http.NewRequest("POST", "http://"+s.web+"/v1/users/login", strings.NewReader(`{"new_password":"Docker-e2e-1!"}`))
	req.SetBasicAuth("admin", "secret")
	resp, err := s.http.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Users []struct{ Token string } `json:"users"`
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || json.Unmarshal(body, &out) != nil || len(out.Users) == 0 {
		s.t.Fatalf("login: %s %s", resp.Status, body)
	}
	s.token = out.Users[0].Token
}

func (s *stack) api(method, path, body string) (int, string) {
	s.t.Helper()
	req, _ := http.NewRequest(method, "http://"+s.web+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.http.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type accepted struct{ id, to string }

// sendMessages posts n text messages through the gateway and returns the
// accepted ones. Each must be accepted: the shard is served when it runs.
func (s *stack) sendMessages(tag string, n int) []accepted {
	s.t.Helper()
	var out []accepted
	for i := 0; i < n; i++ {
		to := fmt.Sprintf("1555%07d", i)
		var code int
		var body string
		// A request that lands in a failover window may be refused (503);
		// the client retries, as a real one would, for up to 10 s.
		deadline := time.Now().Add(10 * time.Second)
		for {
			code, body = s.api("POST", "/v1/messages", fmt.Sprintf(`{"to":%q,"type":"text","text":{"body":"%s %d"}}`, to, tag, i))
			if code == 201 || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		var resp struct {
			Messages []struct{ ID string } `json:"messages"`
		}
		if code != 201 || json.Unmarshal([]byte(body), &resp) != nil || len(resp.Messages) != 1 {
			s.t.Fatalf("POST /v1/messages (%s %d): %d %s", tag, i, code, body)
		}
		out = append(out, accepted{resp.Messages[0].ID, to})
	}
	return out
}

// requireDelivered checks at the network that every accepted message
// arrived exactly once.
func (s *stack) requireDelivered(sent []accepted) {
	s.t.Helper()
	s.eventually(30*time.Second, "every accepted message reaches the network once", func() error {
		var got struct {
			Messages []struct {
				ID string `json:"id"`
			} `json:"messages"`
		}
		s.simnetJSON("/v1/messages", &got)
		seen := map[string]int{}
		for _, m := range got.Messages {
			seen[m.ID]++
		}
		for _, m := range sent {
			if seen[m.id] != 1 {
				return fmt.Errorf("message %s to %s reached the network %d times", m.id, m.to, seen[m.id])
			}
		}
		return nil
	})
}

type interval = clustertest.Interval

func (s *stack) open(sh int) (interval, error) {
	var out struct {
		Connections []interval `json:"connections"`
	}
	if err := s.getJSON("http://"+s.simnet+"/v1/connections", &out); err != nil {
		return interval{}, err
	}
	for _, c := range out.Connections {
		if c.Shard == sh && c.Open {
			return c, nil
		}
	}
	return interval{}, fmt.Errorf("shard %d has no open connection", sh)
}

func (s *stack) openConnection(sh int) interval {
	s.t.Helper()
	c, err := s.open(sh)
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// waitServedAgain waits for shard 0 to be connected at a newer epoch than
// old, and checks it took no longer than the configured intervals allow
// (README, "The failure model"): the old claim runs unhealthy_interval
// from its last renewal, then the network's keepalive must pass, and the
// renewal period and the master's next evaluation add up to a heartbeat
// each; one second of slack for Docker on a busy machine.
func (s *stack) waitServedAgain(old interval, since time.Time) interval {
	s.t.Helper()
	limit := time.Duration((unhealthy+2*heartbeat)*float64(time.Second)) + keepalive + time.Second
	var next interval
	s.eventually(limit+10*time.Second, "shard 0 served again", func() error {
		c, err := s.open(0)
		if err != nil {
			return err
		}
		if c.Epoch <= old.Epoch {
			return fmt.Errorf("still epoch %d on %s", c.Epoch, c.Node)
		}
		next = c
		return nil
	})
	took := time.Duration(next.Start - since.UnixNano())
	s.t.Logf("shard 0 served again by %s (epoch %d) %v after losing %s", next.Node, next.Epoch, took.Round(time.Millisecond), old.Node)
	if took > limit {
		s.t.Errorf("shard 0 was unserved for %v, more than unhealthy_interval + 2 heartbeat_interval + keepalive + 1 s = %v", took, limit)
	}
	return next
}

func (s *stack) simnetJSON(path string, v any) {
	s.t.Helper()
	if err := s.getJSON("http://"+s.simnet+path, v); err != nil {
		s.t.Fatal(err)
	}
}

func (s *stack) getJSON(url string, v any) error {
	resp, err := s.http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s %s", url, resp.Status, b)
	}
	return json.NewDecoder(bytes.NewReader(b)).Decode(v)
}

func (s *stack) eventually(d time.Duration, what string, f func() error) {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
