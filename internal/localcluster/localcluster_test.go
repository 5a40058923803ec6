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
)

// The README's first command brings up a whole cluster whose gateway answers
// GET /v1/health within 60 s (the build excluded), reporting both masters and
// all three coreapps, one of them connected; Ctrl-C stops every process.
func TestLocalClusterAnswersHealth(t *testing.T) {
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./...")
	build.Dir = clustertest.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", clustertest.FreePort(t))
	state := t.TempDir()
	out := &syncBuffer{}
	cmd := exec.Command(filepath.Join(bin, "localcluster"), "-dir", state, "-listen", listen)
	cmd.Env = envWithout("WA_DB_HOSTNAME")
	cmd.Stdout, cmd.Stderr = out, out
	started := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	})

	// The command says when the cluster is up; from then on it must serve.
	base := "http://" + listen
	client := &http.Client{Timeout: 2 * time.Second}
	for !strings.Contains(out.String(), "multiconnect is up") {
		select {
		case err := <-exited:
			t.Fatalf("localcluster exited: %v\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Since(started) > 60*time.Second {
			t.Fatalf("not up within 60 s; output:\n%s", out.String())
		}
	}
	resp, err := client.Get(base + "/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /v1/health without a token: %s, want 401", resp.Status)
	}
	t.Logf("up and answering GET /v1/health %v after the command started", time.Since(started).Round(time.Millisecond))

	req, _ := http.NewRequest("POST", base+"/v1/users/login", strings.NewReader(`{"new_password":"Local-cluster1!"}`))
	req.SetBasicAuth("admin", "secret")
	var login struct {
		Users []struct{ Token string } `json:"users"`
	}
	doJSON(t, client, req, &login)
	if len(login.Users) != 1 || login.Users[0].Token == "" {
		t.Fatalf("login gave no token: %+v", login)
	}
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
		req.Header.Set("Authorization", "Bearer "+login.Users[0].Token)
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
		if syscall.Kill(pid, 0) == nil && !zombie(pid) {
			t.Errorf("process %d outlived localcluster", pid)
		}
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

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(fields) > 0 && fields[0] == "Z"
}
