package transport_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/measure"
	"github.com/multiconnect/multiconnect/plugins/simnet"
	"github.com/multiconnect/multiconnect/plugins/simnet/simnettest"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

const keepalive = 200 * time.Millisecond

// pluginBin is the transport-simnet binary built once for all tests.
var pluginBin string

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		runHelperHost()
		return
	}
	dir, err := os.MkdirTemp("", "transport-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pluginBin, err = simnettest.BuildPlugin(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// logBuffer collects the host's logs (including the plugin's, which
// go-plugin re-logs) and echoes them to the test log.
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Log(strings.TrimSuffix(string(p), "\n"))
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// network starts an in-process simnet and points the plugin at it.
func network(t *testing.T) *simnet.Server {
	t.Helper()
	return simnettest.Network(t, simnet.Config{
		Keepalive: keepalive, StatusDelay: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logBuffer{t: t}, nil)),
	})
}

func startPlugin(t *testing.T) (*transport.Plugin, *logBuffer) {
	t.Helper()
	logs := &logBuffer{t: t}
	p, err := transport.Start(pluginBin, 0, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p, logs
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func eventually(t *testing.T, within time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// onlyInterval returns the network's only recorded connection.
func onlyInterval(srv *simnet.Server) (simnet.Interval, error) {
	ivs := srv.Connections()
	if len(ivs) != 1 {
		return simnet.Interval{}, fmt.Errorf("%d connections recorded, want 1: %+v", len(ivs), ivs)
	}
	return ivs[0], nil
}

func waitClosed(t *testing.T, srv *simnet.Server, within time.Duration) simnet.Interval {
	t.Helper()
	var iv simnet.Interval
	eventually(t, within, "connection closed on the network", func() error {
		var err error
		if iv, err = onlyInterval(srv); err != nil {
			return err
		}
		if iv.Open {
			return fmt.Errorf("still open: %+v", iv)
		}
		return nil
	})
	return iv
}

func TestPluginLifecycle(t *testing.T) {
	srv := network(t)
	p, logs := startPlugin(t)
	tr := p.Transport()
	ctx := ctxT(t)

	info, err := tr.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "simnet" || info.Version == "" || info.KeepaliveTimeout != keepalive {
		t.Errorf("info = %+v, want simnet with keepalive %v", info, keepalive)
	}

	err = tr.Connect(ctx, transport.ConnectRequest{Shard: 3, Epoch: 7, Node: "n1", Deadline: transport.MonoNow() - 1})
	if !errors.Is(err, transport.ErrDeadlinePassed) {
		t.Errorf("connect with a past deadline: %v, want ErrDeadlinePassed", err)
	}
	if err := tr.Extend(ctx, 7, transport.MonoNow()+int64(time.Second), transport.Layout{}); !errors.Is(err, transport.ErrNotConnected) {
		t.Errorf("extend before connect: %v, want ErrNotConnected", err)
	}
	if len(srv.Connections()) != 0 {
		t.Fatalf("refused calls reached the network: %+v", srv.Connections())
	}

	events, err := tr.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deadline := transport.MonoNow() + int64(2*time.Second)
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 3, Epoch: 7, Node: "n1", Deadline: deadline}); err != nil {
		t.Fatal(err)
	}
	iv, err := onlyInterval(srv)
	if err != nil {
		t.Fatal(err)
	}
	if !iv.Open || iv.Shard != 3 || iv.Epoch != 7 || iv.Node != "n1" {
		t.Errorf("network recorded %+v, want shard 3 epoch 7 from n1, open", iv)
	}
	h, err := tr.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (transport.Health{Connected: true, Shard: 3, Epoch: 7, Deadline: deadline}); h != want {
		t.Errorf("health = %+v, want %+v", h, want)
	}

	later := transport.MonoNow() + int64(3*time.Second)
	if err := tr.Extend(ctx, 7, later, transport.Layout{}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Extend(ctx, 6, later+1, transport.Layout{}); !errors.Is(err, transport.ErrEpochMismatch) {
		t.Errorf("extend with another epoch: %v, want ErrEpochMismatch", err)
	}
	if h, _ := tr.Health(ctx); h.Deadline != later {
		t.Errorf("deadline after extend = %d, want %d", h.Deadline, later)
	}

	res, err := tr.Send(ctx, []transport.Message{
		{ID: "m1", To: "alice", Type: "text", Body: []byte(`{"text":"hello"}`)},
		{ID: "m1", To: "alice"},
		{ID: "m2", To: "bob", Body: []byte(`not json`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || res[0].Status != transport.SendAccepted || res[1].Status != transport.SendDuplicate ||
		res[2].Status != transport.SendFailed || res[2].Error == "" {
		t.Errorf("send results = %+v, want accepted, duplicate, failed", res)
	}
	if msgs := srv.Messages(simnet.MessageFilter{}); len(msgs) != 1 || msgs[0].ID != "m1" || string(msgs[0].Body) != `{"text":"hello"}` {
		t.Errorf("network received %+v, want m1 once", msgs)
	}
	var got []string
	for len(got) < 3 {
		select {
		case e := <-events:
			got = append(got, fmt.Sprintf("%s %s %s %s", e.Kind, e.MessageID, e.Status, e.Recipient))
		case <-time.After(2 * time.Second):
			t.Fatalf("events so far %q", got)
		}
	}
	if want := "[status m1 sent alice status m1 delivered alice status m1 read alice]"; fmt.Sprint(got) != want {
		t.Errorf("events = %v, want %s", got, want)
	}

	// The plugin's pings keep the connection across several keepalives.
	time.Sleep(3 * keepalive)
	if iv, _ := onlyInterval(srv); !iv.Open {
		t.Fatalf("connection dropped while the plugin should be pinging: %+v", iv)
	}

	if err := tr.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	// Disconnect waits for the network's confirmation.
	if iv, _ := onlyInterval(srv); iv.Open || iv.EndReason != simnet.EndClosed {
		t.Errorf("after disconnect the network has %+v, want closed by the plugin", iv)
	}
	if h, _ := tr.Health(ctx); h.Connected {
		t.Errorf("health after disconnect = %+v", h)
	}
	if _, err := tr.Send(ctx, []transport.Message{{ID: "m3"}}); !errors.Is(err, transport.ErrNotConnected) {
		t.Errorf("send after disconnect: %v, want ErrNotConnected", err)
	}

	deadline = transport.MonoNow() + int64(2*time.Second)
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 3, Epoch: 8, Node: "n1", Deadline: deadline}); err != nil {
		t.Fatal(err)
	}
	err = tr.Connect(ctx, transport.ConnectRequest{Shard: 3, Epoch: 7, Node: "n1", Deadline: deadline})
	if !errors.Is(err, transport.ErrRefused) {
		t.Errorf("connect with a stale epoch: %v, want ErrRefused", err)
	}
	if v := srv.Violations(); v.Count != 0 {
		t.Errorf("violations = %+v", v)
	}

	// The plugin's own logs reach the host's slog, with their level.
	if !strings.Contains(logs.String(), `"level":"INFO","msg":"connected to the network"`) {
		t.Error("the plugin's info logs did not reach the host logger")
	}
}

// The shard count the host passes (transport.Layout) reaches the network
// through the gRPC plugin: at connect, and on an Extend with a newer map
// version; a stale one (lower version) does not undo it.
func TestPluginPassesTheShardCount(t *testing.T) {
	srv := network(t)
	p, _ := startPlugin(t)
	tr := p.Transport()
	ctx := ctxT(t)
	deadline := transport.MonoNow() + int64(3*time.Second)
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 1, Epoch: 1, Node: "n1", Deadline: deadline,
		Layout: transport.Layout{Shards: 4, Version: 5}}); err != nil {
		t.Fatal(err)
	}
	if n, v := srv.Layout(); n != 4 || v != 5 {
		t.Errorf("after connect the network routes by %d shards (version %d), want 4 (5)", n, v)
	}
	for _, l := range []transport.Layout{{Shards: 2, Version: 6}, {Shards: 4, Version: 5}} {
		if err := tr.Extend(ctx, 1, deadline, l); err != nil {
			t.Fatal(err)
		}
	}
	end := time.Now().Add(2 * time.Second)
	for {
		n, v := srv.Layout()
		if n == 2 && v == 6 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("after Extend the network routes by %d shards (version %d), want 2 (6)", n, v)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(3 * keepalive) // pings carry the plugin's layout: still the newest
	if n, v := srv.Layout(); n != 2 || v != 6 {
		t.Errorf("a stale layout undid the newer one: %d shards (version %d)", n, v)
	}
}

func TestPluginClosesAtDeadline(t *testing.T) {
	srv := network(t)
	p, _ := startPlugin(t)
	tr := p.Transport()
	ctx := ctxT(t)

	const life = 600 * time.Millisecond // three keepalives
	deadline := transport.MonoNow() + int64(life)
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 1, Epoch: 1, Node: "n1", Deadline: deadline}); err != nil {
		t.Fatal(err)
	}
	iv := waitClosed(t, srv, 2*life)
	// The plugin closed the socket itself, at the deadline, not the
	// network after a silence.
	if iv.EndReason != simnet.EndEOF {
		t.Errorf("connection ended by %q, want the plugin closing it (%q)", iv.EndReason, simnet.EndEOF)
	}
	// Safety: nothing reached the network after the deadline. The network's
	// clock starts at its handshake, after our deadline's origin, so a frame
	// accepted more than life after Start was written late.
	if d := time.Duration(iv.LastFrame - iv.Start); d > life {
		t.Errorf("the network accepted a frame %v after the connection opened, past the %v deadline", d, life)
	}
	// Liveness: the close came at the deadline. The network notices the EOF
	// a scheduling delay later, so End may pass life by a little; a close
	// after the network's silence timeout (1.5 keepalives) would be 300 ms late.
	if d := time.Duration(iv.End - iv.Start); d > life+50*time.Millisecond || d < life-100*time.Millisecond {
		t.Errorf("connection lasted %v on the network, want about %v", d, life)
	}
	if transport.MonoNow() < deadline {
		t.Error("the connection closed before its deadline")
	}
	h, err := tr.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Connected || !strings.Contains(h.LastError, "deadline") {
		t.Errorf("health = %+v, want disconnected because of the deadline", h)
	}
	if err := tr.Extend(ctx, 1, transport.MonoNow()+int64(time.Second), transport.Layout{}); !errors.Is(err, transport.ErrNotConnected) {
		t.Errorf("extend after the deadline: %v, want ErrNotConnected", err)
	}
	if _, err := tr.Send(ctx, []transport.Message{{ID: "late"}}); err == nil {
		t.Error("send after the deadline succeeded")
	}
	if n := len(srv.Messages(simnet.MessageFilter{})); n != 0 {
		t.Errorf("network received %d messages after the deadline", n)
	}
}

func TestPluginKilled(t *testing.T) {
	srv := network(t)
	p, _ := startPlugin(t)
	ctx := ctxT(t)
	req := transport.ConnectRequest{Shard: 2, Epoch: 4, Node: "n1", Deadline: transport.MonoNow() + int64(5*time.Second)}
	if err := p.Transport().Connect(ctx, req); err != nil {
		t.Fatal(err)
	}
	if p.Exited() {
		t.Fatal("plugin reported exited while running")
	}
	if err := syscall.Kill(p.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "Exited after SIGKILL", func() error {
		if !p.Exited() {
			return errors.New("not exited")
		}
		return nil
	})
	iv := waitClosed(t, srv, time.Second) // the kernel closed the socket
	if iv.EndReason != simnet.EndEOF {
		t.Errorf("killed plugin's connection ended by %q, want %q", iv.EndReason, simnet.EndEOF)
	}
	if _, err := p.Transport().Health(ctx); err == nil {
		t.Error("health answered by a dead plugin")
	}

	// What the coreapp does next: a new plugin reconnects the same epoch.
	p2, _ := startPlugin(t)
	if err := p2.Transport().Connect(ctx, req); err != nil {
		t.Fatalf("reconnect with the same epoch after a crash: %v", err)
	}
	if v := srv.Violations(); v.Count != 0 {
		t.Errorf("violations = %+v", v)
	}
}

// helperEnv makes the test binary act as a coreapp (see runHelperHost).
const helperEnv = "TRANSPORT_TEST_HELPER_HOST"

// runHelperHost starts the plugin, connects it, prints its pid and waits
// to be killed.
func runHelperHost() {
	p, err := transport.Start(os.Getenv("TRANSPORT_TEST_PLUGIN"), 0, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = p.Transport().Connect(ctx, transport.ConnectRequest{
		Shard: 9, Epoch: 1, Node: "helper", Deadline: transport.MonoNow() + int64(time.Minute),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("pid %d\n", p.Pid())
	select {}
}

func TestPluginDiesWithHost(t *testing.T) {
	srv := network(t)
	host := exec.Command(os.Args[0], "-test.run=^$")
	host.Env = append(os.Environ(), helperEnv+"=1", "TRANSPORT_TEST_PLUGIN="+pluginBin)
	host.Stderr = &logBuffer{t: t}
	stdout, err := host.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = host.Process.Kill(); _ = host.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("helper host: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "pid ")))
	if err != nil {
		t.Fatalf("helper host said %q", line)
	}
	if iv, err := onlyInterval(srv); err != nil || !iv.Open {
		t.Fatalf("helper's connection: %+v, %v", iv, err)
	}

	if err := host.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "plugin gone after its host was SIGKILLed", func() error {
		if measure.Running(pid) {
			return fmt.Errorf("plugin %d still running", pid)
		}
		return nil
	})
	if iv := waitClosed(t, srv, time.Second); iv.EndReason != simnet.EndEOF {
		t.Errorf("orphaned plugin's connection ended by %q, want %q", iv.EndReason, simnet.EndEOF)
	}
}

// TestPluginGetsItsGOMAXPROCS starts the real plugin with the host's
// environment saying GOMAXPROCS=2 and reads the plugin process's own
// environment: the procs Start was given replace the host's value (one
// GOMAXPROCS, the last of duplicates being the one Go would use), and 0
// passes the host's through.
func TestPluginGetsItsGOMAXPROCS(t *testing.T) {
	t.Setenv("GOMAXPROCS", "2")
	for _, tc := range []struct {
		procs int
		want  string
	}{{1, "GOMAXPROCS=1"}, {3, "GOMAXPROCS=3"}, {0, "GOMAXPROCS=2"}} {
		p, err := transport.Start(pluginBin, tc.procs, slog.New(slog.NewTextHandler(&logBuffer{t: t}, nil)))
		if err != nil {
			t.Fatal(err)
		}
		env, err := measure.ProcessEnv(p.Pid())
		p.Kill()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, kv := range env {
			if strings.HasPrefix(kv, "GOMAXPROCS=") {
				got = append(got, kv)
			}
		}
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("procs %d: the plugin's environment has %q, want only %q", tc.procs, got, tc.want)
		}
	}
}

func TestProcsFromEnv(t *testing.T) {
	for _, tc := range []struct {
		env  string
		want int
		bad  bool
	}{{"", 0, false}, {"0", 0, false}, {"1", 1, false}, {"4", 4, false}, {"-1", 0, true}, {"two", 0, true}} {
		t.Setenv("MC_TRANSPORT_GOMAXPROCS", tc.env)
		n, err := transport.ProcsFromEnv()
		if (err != nil) != tc.bad || n != tc.want {
			t.Errorf("MC_TRANSPORT_GOMAXPROCS=%q: got %d, %v; want %d (error: %v)", tc.env, n, err, tc.want, tc.bad)
		}
	}
}
