package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/clustertest"
	"github.com/multiconnect/multiconnect/internal/measure"
)

// The README's first command brings up a whole cluster whose gateway answers
// GET /v1/health within 60 s (the build excluded), reporting both masters and
// all three coreapps, one of them connected; Ctrl-C stops every process.
func TestLocalClusterAnswersHealth(t *testing.T) {
	r := runLocalCluster(t, buildAll(t))
	cmd, exited, out, base, started := r.cmd, r.exited, r.out, r.base, r.started
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(base + "/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /v1/health without a token: %s, want 401", resp.Status)
	}
	t.Logf("up and answering GET /v1/health %v after the command started", time.Since(started).Round(time.Millisecond))

	token := r.login(t)
	// Every node reports in, and one coreapp serves shard 0.
	var health struct {
		Health map[string]struct {
			GatewayStatus string `json:"gateway_status"`
			Role          string `json:"role"`
			Shard         *int   `json:"shard"`
		} `json:"health"`
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequest("GET", base+"/v1/health", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		doJSON(t, client, req, &health)
		roles := map[string]int{}
		serving := 0
		for _, n := range health.Health {
			roles[n.Role]++
			if n.Role == "coreapp" && n.GatewayStatus == "connected" && n.Shard != nil && *n.Shard == 0 {
				serving++
			}
		}
		if roles["primary_master"] == 1 && roles["secondary_master"] == 1 && roles["coreapp"] == 3 && serving == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health never showed 2 masters and 3 coreapps with shard 0 served: %+v", health)
		}
		time.Sleep(200 * time.Millisecond)
	}

	children := descendants(cmd.Process.Pid)
	if len(children) < 7 { // mariadbd, simnetd, 2 masters, 3 coreapps, caddy
		t.Errorf("localcluster runs %d processes, want at least 7", len(children))
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("localcluster after Ctrl-C: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("localcluster did not stop within 30 s of Ctrl-C")
	}
	for _, pid := range children {
		if measure.Running(pid) {
			t.Errorf("process %d outlived localcluster", pid)
		}
	}
}

// localRun is a running localcluster command.
type localRun struct {
	cmd     *exec.Cmd
	exited  chan error
	out     *syncBuffer
	base    string // the REST API's URL
	started time.Time
}

// buildAll builds every binary into a temporary directory.
func buildAll(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./...")
	build.Dir = clustertest.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runLocalCluster starts bin/localcluster with args on a private MariaDB
// and waits until it says it is up (60 s at most).
func runLocalCluster(t *testing.T, bin string, args ...string) *localRun {
	t.Helper()
	listen := fmt.Sprintf("127.0.0.1:%d", clustertest.FreePort(t))
	r := &localRun{out: &syncBuffer{}, base: "http://" + listen, exited: make(chan error, 1)}
	r.cmd = exec.Command(filepath.Join(bin, "localcluster"), append([]string{"-dir", t.TempDir(), "-listen", listen}, args...)...)
	r.cmd.Env = envWithout("WA_DB_HOSTNAME")
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	r.started = time.Now()
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.exited <- r.cmd.Wait() }()
	t.Cleanup(func() {
		r.cmd.Process.Signal(syscall.SIGKILL)
		err := <-r.exited
		r.exited <- err
	})
	// The command says when the cluster is up; from then on it must serve.
	for !strings.Contains(r.out.String(), "multiconnect is up") {
		select {
		case err := <-r.exited:
			t.Fatalf("localcluster exited: %v\n%s", err, r.out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Since(r.started) > 60*time.Second {
			t.Fatalf("not up within 60 s; output:\n%s", r.out.String())
		}
	}
	return r
}

// login sets the admin's first password and returns a bearer token.
func (r *localRun) login(t *testing.T) string {
	t.Helper()
	req, _ := http.NewRequest("POST", r.base+"/v1/users/login", strings.NewReader(`{"new_password":"Local-cluster1!"}`))
	req.SetBasicAuth("admin", "secret")
	var login struct {
		Users []struct{ Token string } `json:"users"`
	}
	doJSON(t, &http.Client{Timeout: 5 * time.Second}, req, &login)
	if len(login.Users) != 1 || login.Users[0].Token == "" {
		t.Fatalf("login gave no token: %+v", login)
	}
	return login.Users[0].Token
}

// TestLocalClusterCloudAPI: with -transport cloudapi a message sent through
// the gateway reaches the Graph API test server, and its statuses come back
// through the gateway's webhook route (the message's state moves on).
func TestLocalClusterCloudAPI(t *testing.T) {
	r := runLocalCluster(t, buildAll(t), "-transport", "cloudapi", "-shards", "2")
	token := r.login(t)
	var stateURL string
	for _, f := range strings.Fields(r.out.String()) {
		if strings.HasSuffix(f, "/_test/state") {
			stateURL = f
		}
	}
	if stateURL == "" {
		t.Fatalf("no Graph API test server in the output:\n%s", r.out.String())
	}
	client := &http.Client{Timeout: 5 * time.Second}
	req, _ := http.NewRequest("POST", r.base+"/v1/messages", strings.NewReader(`{"to":"15550104001","text":{"body":"hello from localcluster"}}`))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var sent struct {
		Messages []struct{ ID string } `json:"messages"`
	}
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &sent) != nil || len(sent.Messages) != 1 {
		t.Fatalf("POST /v1/messages: %s %s", resp.Status, body)
	}
	id := sent.Messages[0].ID
	deadline := time.Now().Add(20 * time.Second)
	for {
		var st struct {
			Messages []struct {
				Opaque string `json:"biz_opaque_callback_data"`
			} `json:"messages"`
			Deliveries []struct {
				Kind      string `json:"kind"`
				Delivered bool   `json:"delivered"`
			} `json:"deliveries"`
		}
		req, _ := http.NewRequest("GET", stateURL, nil)
		doJSON(t, client, req, &st)
		taken, acked := false, 0
		for _, m := range st.Messages {
			taken = taken || m.Opaque == id
		}
		for _, d := range st.Deliveries {
			if strings.HasPrefix(d.Kind, "status:") && d.Delivered {
				acked++
			}
		}
		if taken && acked >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s: taken %v, %d status webhooks acknowledged by the gateway", id, taken, acked)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// syncBuffer collects the command's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func doJSON(t *testing.T, client *http.Client, req *http.Request, v any) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %d %s", req.Method, req.URL.Path, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("%s %s: %v in %s", req.Method, req.URL.Path, err, body)
	}
}

func envWithout(key string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, key+"=") {
			env = append(env, kv)
		}
	}
	return env
}

// descendants lists the process tree under pid.
func descendants(pid int) []int {
	var out []int
	for _, c := range clustertest.ChildPIDs(pid) {
		out = append(append(out, c), descendants(c)...)
	}
	return out
}
