package clustertest

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/measure"
)

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// A SIGKILLed primary coreapp is replaced within unhealthy_interval + 1 s,
// and the network never sees two connections for the shard.
func TestKillPrimaryCoreapp(t *testing.T) {
	c := New(t, Options{})
	first := c.WaitConnected(0, "", 10*time.Second)
	victim := c.CoreappByAddr(first.Node)
	killed := time.Now()
	victim.Kill()
	next := c.WaitConnected(0, first.Node, seconds(c.Opts.Unhealthy)+time.Second)
	t.Logf("failover: %v from SIGKILL to the new primary's connection (%s epoch %d -> %s epoch %d)",
		time.Duration(next.Start-killed.UnixNano()).Round(time.Millisecond), first.Node, first.Epoch, next.Node, next.Epoch)
	if next.Epoch <= first.Epoch {
		t.Errorf("new primary connected at epoch %d, not above the old %d", next.Epoch, first.Epoch)
	}
	c.RequireNoViolations()
}

// A SIGKILLed primary master is replaced within the lease time + 1 s, and
// coreapps keep serving throughout, even with every master down.
func TestKillPrimaryMaster(t *testing.T) {
	c := New(t, Options{MasterLease: 2 * time.Second})
	conn := c.WaitConnected(0, "", 10*time.Second)
	old, err := c.PrimaryMasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	c.MasterByAddr(old).Kill()
	c.Eventually(c.Opts.MasterLease+time.Second, "a secondary master takes the lease", func() error {
		addr, err := c.PrimaryMasterAddr()
		if err != nil {
			return err
		}
		if addr == old {
			return fmt.Errorf("lease still with the killed master")
		}
		code, body, err := c.Internal("GET", addr, "/internal/health", "")
		if err != nil || code != 200 || !strings.Contains(string(body), `"primary_master"`) {
			return fmt.Errorf("new holder %s not primary yet: %d %s %v", addr, code, body, err)
		}
		return nil
	})
	t.Logf("master takeover in %v (lease %v)", time.Since(killed).Round(time.Millisecond), c.Opts.MasterLease)
	// The shard's connection is the very same one: no failover happened.
	time.Sleep(seconds(c.Opts.Unhealthy) * 2)
	if cur, ok := c.OpenConnection(0); !ok || cur.ID != conn.ID {
		t.Fatalf("shard 0 connection changed during master failover: was %+v, now %+v (open %v)", conn, cur, ok)
	}
	// With every master down, coreapps keep serving with what they have.
	for _, m := range c.Masters {
		m.Kill()
	}
	time.Sleep(seconds(c.Opts.Unhealthy) * 3)
	if cur, ok := c.OpenConnection(0); !ok || cur.ID != conn.ID {
		t.Fatalf("shard 0 lost its connection with all masters down: now %+v (open %v)", cur, ok)
	}
	// A master coming back takes over without disturbing the shard.
	c.StartMaster()
	c.Eventually(10*time.Second, "a restarted master becomes primary", func() error {
		_, err := c.PrimaryMasterAddr()
		return err
	})
	time.Sleep(seconds(c.Opts.Unhealthy) * 2)
	if cur, ok := c.OpenConnection(0); !ok || cur.ID != conn.ID {
		t.Fatalf("shard 0 connection changed when a master came back: now %+v (open %v)", cur, ok)
	}
	c.RequireNoViolations()
}

// A primary coreapp frozen (SIGSTOP) longer than unhealthy_interval loses
// its shard; when it wakes (SIGCONT) it must find that out and stay off the
// network. Its plugin, not frozen, must close the connection at the claim's
// deadline by itself.
func TestFrozenPrimaryCoreapp(t *testing.T) {
	c := New(t, Options{})
	first := c.WaitConnected(0, "", 10*time.Second)
	victim := c.CoreappByAddr(first.Node)
	victim.Signal(syscall.SIGSTOP)
	next := c.WaitConnected(0, first.Node, seconds(c.Opts.Unhealthy)+2*time.Second)
	time.Sleep(seconds(c.Opts.Unhealthy)) // frozen well past unhealthy_interval
	victim.Signal(syscall.SIGCONT)
	c.Eventually(5*time.Second, "the woken coreapp reports it is not primary", func() error {
		code, body, err := c.Internal("GET", victim.Addr, "/internal/health", "")
		if err != nil || code != 200 {
			return fmt.Errorf("health: %d %v", code, err)
		}
		var h struct{ Primary bool }
		json.Unmarshal(body, &h)
		if h.Primary {
			return fmt.Errorf("still claims to be primary: %s", body)
		}
		return nil
	})
	time.Sleep(seconds(c.Opts.Unhealthy)) // give a confused node the chance to reconnect
	if cur, ok := c.OpenConnection(0); !ok || cur.ID != next.ID {
		t.Fatalf("after the frozen node woke, shard 0 is %+v (open %v); want the successor's connection %d", cur, ok, next.ID)
	}
	for _, iv := range c.Connections() {
		if iv.Node == first.Node && iv.Start > next.Start {
			t.Errorf("the woken node reconnected: %+v", iv)
		}
	}
	c.RequireNoViolations()
}

// The whole node frozen, coreapp and plugin alike (a VM stall): nothing
// closes the connection but the network's keepalive timeout, which
// promotion must wait for.
func TestFrozenNodeWithPlugin(t *testing.T) {
	c := New(t, Options{})
	first := c.WaitConnected(0, "", 10*time.Second)
	victim := c.CoreappByAddr(first.Node)
	kids := victim.Children()
	if len(kids) == 0 {
		t.Fatal("the coreapp has no plugin process")
	}
	for _, k := range kids {
		syscall.Kill(k, syscall.SIGSTOP)
	}
	victim.Signal(syscall.SIGSTOP)
	next := c.WaitConnected(0, first.Node, seconds(c.Opts.Unhealthy)+2*time.Second)
	time.Sleep(seconds(c.Opts.Unhealthy))
	victim.Signal(syscall.SIGCONT)
	for _, k := range kids {
		syscall.Kill(k, syscall.SIGCONT)
	}
	time.Sleep(2 * seconds(c.Opts.Unhealthy))
	if cur, ok := c.OpenConnection(0); !ok || cur.ID != next.ID {
		t.Fatalf("after the frozen node woke, shard 0 is %+v (open %v); want %d", cur, ok, next.ID)
	}
	c.RequireNoViolations()
}

// MariaDB crashes and restarts under the cluster; it recovers by itself.
func TestDatabaseRestart(t *testing.T) {
	c := New(t, Options{})
	c.WaitConnected(0, "", 10*time.Second)
	c.DB.Restart(time.Second)
	c.Eventually(20*time.Second, "a primary master again", func() error {
		_, err := c.PrimaryMasterAddr()
		return err
	})
	c.WaitConnected(0, "", 20*time.Second)
	// And it still fails over afterwards: the cluster really is back.
	cur := c.WaitConnected(0, "", 5*time.Second)
	c.CoreappByAddr(cur.Node).Kill()
	c.WaitConnected(0, cur.Node, seconds(c.Opts.Unhealthy)+2*time.Second)
	for _, p := range append(append([]*Proc{}, c.Masters...), c.Coreapps...) {
		if p.Exited() && p.Addr != cur.Node {
			t.Errorf("%s exited during the database restart:\n%s", p.Name, tailLines(p.Log(), 10))
		}
	}
	c.RequireNoViolations()
}

// Four shards on five coreapps: each shard on its own coreapp; a killed
// primary's shard goes to the spare.
func TestFourShardsFiveCoreapps(t *testing.T) {
	c := New(t, Options{Shards: 4, Coreapps: 5})
	conns := c.WaitAllShardsConnected(10 * time.Second)
	victim := conns[2].Node
	c.CoreappByAddr(victim).Kill()
	next := c.WaitConnected(2, victim, seconds(c.Opts.Unhealthy)+time.Second)
	for s, iv := range conns {
		if s != 2 && iv.Node == next.Node {
			t.Errorf("shard 2 went to %s, which already serves shard %d", next.Node, s)
		}
	}
	after := c.WaitAllShardsConnected(5 * time.Second)
	for s, iv := range after {
		if s != 2 && iv.ID != conns[s].ID {
			t.Errorf("shard %d was disturbed by shard 2's failover", s)
		}
	}
	c.RequireNoViolations()
}

// A crashed transport plugin is restarted by its coreapp, which reconnects
// at the same epoch: the shard is not lost.
func TestPluginCrashIsRestarted(t *testing.T) {
	// The harness passes MC_TRANSPORT_GOMAXPROCS to every node: the
	// coreapp starts its plugin, and the restarted one, with it.
	t.Setenv("MC_TRANSPORT_GOMAXPROCS", "1")
	c := New(t, Options{})
	first := c.WaitConnected(0, "", 10*time.Second)
	owner := c.CoreappByAddr(first.Node)
	kids := owner.Children()
	if len(kids) != 1 {
		t.Fatalf("coreapp has %d child processes, want its one plugin", len(kids))
	}
	if v := processEnv(t, kids[0], "GOMAXPROCS"); v != "1" {
		t.Errorf("the plugin runs with GOMAXPROCS=%q, want 1 (MC_TRANSPORT_GOMAXPROCS)", v)
	}
	syscall.Kill(kids[0], syscall.SIGKILL)
	c.Eventually(5*time.Second, "the same coreapp reconnects on a new plugin", func() error {
		iv, ok := c.OpenConnection(0)
		if !ok || iv.ID == first.ID {
			return fmt.Errorf("not reconnected yet")
		}
		if iv.Node != first.Node || iv.Epoch != first.Epoch {
			return fmt.Errorf("shard moved to %s epoch %d; want %s epoch %d", iv.Node, iv.Epoch, first.Node, first.Epoch)
		}
		return nil
	})
	if k := owner.Children(); len(k) != 1 || k[0] == kids[0] {
		t.Errorf("plugin processes after the crash: %v (was %v)", k, kids)
	} else if v := processEnv(t, k[0], "GOMAXPROCS"); v != "1" {
		t.Errorf("the restarted plugin runs with GOMAXPROCS=%q, want 1", v)
	}
	c.RequireNoViolations()
}

// Internal ports admit cluster members only, and log the refusals.
func TestInternalPortsRefuseStrangers(t *testing.T) {
	c := New(t, Options{Coreapps: 1})
	for _, p := range []*Proc{c.Masters[0], c.Coreapps[0]} {
		for _, secret := range []string{"", "wrong-secret"} {
			req := fmt.Sprintf("GET /internal/health HTTP/1.1\r\nHost: x\r\nX-Multiconnect-Cluster: %s\r\nConnection: close\r\n\r\n", secret)
			resp := rawHTTP(t, p.Addr, req)
			if !strings.Contains(resp, " 403 ") || !strings.Contains(resp, `"code":1005`) {
				t.Errorf("%s with secret %q: %q, want 403 with code 1005", p.Name, secret, firstLine(resp))
			}
		}
		if code, _, err := c.Internal("GET", p.Addr, "/internal/health", ""); err != nil || code != 200 {
			t.Errorf("%s refused the right secret: %d %v", p.Name, code, err)
		}
		if !strings.Contains(p.Log(), "refused internal request") {
			t.Errorf("%s did not log the refusal", p.Name)
		}
	}
	// A promotion from a stranger must not reach the coreapp.
	promote := `{"shard":0,"epoch":99,"incarnation":1}`
	resp := rawHTTP(t, c.Coreapps[0].Addr, fmt.Sprintf("POST /internal/promote HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(promote), promote))
	if !strings.Contains(resp, " 403 ") {
		t.Errorf("unauthenticated promote: %q", firstLine(resp))
	}
}

func rawHTTP(t *testing.T, addr, req string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	conn.Write([]byte(req))
	buf := make([]byte, 4096)
	n, _ := conn.Read(buf)
	return string(buf[:n])
}

func firstLine(s string) string { return strings.SplitN(s, "\n", 2)[0] }

// A settings change reaches every node without a restart: a longer
// unhealthy_interval then governs the next failover.
func TestSettingsChangeGovernsFailover(t *testing.T) {
	c := New(t, Options{})
	addr, _ := c.PrimaryMasterAddr()
	code, body, _ := c.Internal("PATCH", addr, "/v1/settings/application", `{"heartbeat_interval":2,"unhealthy_interval":1}`)
	if code != 400 || !strings.Contains(string(body), `"code":1009`) {
		t.Fatalf("unhealthy_interval below heartbeat_interval: %d %s, want 400 with 1009", code, body)
	}
	code, body, _ = c.Internal("GET", addr, "/v1/settings/application", "")
	if code != 200 || !strings.Contains(string(body), `"unhealthy_interval":1`) {
		t.Fatalf("a refused change altered the settings: %d %s", code, body)
	}
	c.SetSettings(0.25, 3)
	time.Sleep(time.Second) // one claim renewal at the new length
	first := c.WaitConnected(0, "", 5*time.Second)
	killed := time.Now()
	c.CoreappByAddr(first.Node).Kill()
	next := c.WaitConnected(0, first.Node, 5*time.Second)
	took := time.Duration(next.Start - killed.UnixNano())
	t.Logf("failover with unhealthy_interval 3: %v", took.Round(time.Millisecond))
	if took < 2*time.Second {
		t.Errorf("failover took %v: the 3 s unhealthy_interval was not in force", took)
	}
	c.RequireNoViolations()
}

// Bad configuration ends the process with a one-line reason, never a panic.
func TestBadConfiguration(t *testing.T) {
	c := New(t, Options{Coreapps: 1})
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	busy := held.Addr().String()
	deadPort := FreePort(t)
	plugin := "MC_TRANSPORT=" + filepath.Join(c.Bin, "transport-simnet")
	cases := []struct {
		name, bin string
		env       []string
		want      string
	}{
		{"master no database", "master", []string{fmt.Sprintf("WA_DB_PORT=%d", deadPort), "MC_DB_WAIT=1s"}, "cannot reach MySQL"},
		{"coreapp no database", "coreapp", []string{fmt.Sprintf("WA_DB_PORT=%d", deadPort), "MC_DB_WAIT=1s", plugin}, "cannot reach MySQL"},
		{"master wrong password", "master", []string{"WA_DB_PASSWORD=wrong"}, "check WA_DB_USERNAME and WA_DB_PASSWORD"},
		{"coreapp wrong password", "coreapp", []string{"WA_DB_PASSWORD=wrong", plugin}, "check WA_DB_USERNAME and WA_DB_PASSWORD"},
		{"unknown shard count", "master", []string{"MC_SHARDS=3"}, "shard count must be one of"},
		{"master port in use", "master", []string{"MC_LISTEN=" + busy}, "listen on " + busy},
		{"coreapp port in use", "coreapp", []string{"MC_LISTEN=" + busy, plugin}, "listen on " + busy},
		{"missing plugin", "coreapp", []string{"MC_TRANSPORT=/nonexistent/transport"}, "transport plugin"},
		{"master missing plugin", "master", []string{"MC_TRANSPORT=/nonexistent/transport"}, "transport plugin"},
		{"bad db port", "master", []string{"WA_DB_PORT=abc"}, "WA_DB_PORT"},
		{"bad engine", "coreapp", []string{"WA_DB_ENGINE=SQLITE", plugin}, "WA_DB_ENGINE"},
		{"bad plugin GOMAXPROCS", "coreapp", []string{"MC_TRANSPORT_GOMAXPROCS=two", plugin}, "MC_TRANSPORT_GOMAXPROCS"},
		{"master bad plugin GOMAXPROCS", "master", []string{"MC_TRANSPORT_GOMAXPROCS=-1"}, "MC_TRANSPORT_GOMAXPROCS"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := append(c.NodeEnv(FreePort(t)), tc.env...)
			p := Start(t, c.Dir, fmt.Sprintf("bad%d", i), filepath.Join(c.Bin, tc.bin), env)
			code := p.Wait(15 * time.Second)
			out := strings.TrimSpace(p.Log())
			if code != 1 {
				t.Fatalf("exit code %d, want 1; output:\n%s", code, out)
			}
			if strings.Count(out, "\n") != 0 || !strings.Contains(out, tc.want) {
				t.Errorf("want one line containing %q, got:\n%s", tc.want, out)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
				t.Errorf("panicked: %s", out)
			}
		})
	}
	// A node facing a schema newer than it knows refuses to start.
	if _, err := c.SQL.Exec(`UPDATE schema_version SET version = version + 1`); err != nil {
		t.Fatal(err)
	}
	defer c.SQL.Exec(`UPDATE schema_version SET version = version - 1`)
	for _, bin := range []string{"master", "coreapp"} {
		p := Start(t, c.Dir, "newer-"+bin, filepath.Join(c.Bin, bin), append(c.NodeEnv(FreePort(t)), plugin))
		if code := p.Wait(15 * time.Second); code != 1 || !strings.Contains(p.Log(), "schema is newer than this binary") {
			t.Errorf("%s on a newer schema: exit %d, output %q", bin, code, p.Log())
		}
	}
}

// processEnv is the value of key in pid's environment as it started
// (/proc/<pid>/environ), "" when absent; the last of duplicates, as Go
// reads it.
func processEnv(t *testing.T, pid int, key string) string {
	t.Helper()
	env, err := measure.ProcessEnv(pid)
	if err != nil {
		t.Fatal(err)
	}
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}
