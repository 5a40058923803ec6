package clustertest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/pprofserve"
)

// TestBenchmarkHooks checks, on real processes, what the throughput
// benchmark relies on: with MC_PPROF_DIR set every daemon (simnetd, master,
// coreapp and its transport plugin) writes the address of its pprof
// listener there and serves a CPU profile on it, and the network's
// GET /v1/messages/count counts what it accepted.
func TestBenchmarkHooks(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(pprofserve.EnvDir, dir)
	c := New(t, Options{Masters: 1, Coreapps: 1, Shards: 1})
	want := map[string]int{"simnetd": c.Simnet.Pid(), "master": c.Masters[0].Pid(), "coreapp": c.Coreapps[0].Pid()}
	if kids := c.Coreapps[0].Children(); len(kids) == 1 {
		want["transport-simnet"] = kids[0]
	} else {
		t.Fatalf("the coreapp has %d children, want its one plugin", len(kids))
	}
	for name, pid := range want {
		path := filepath.Join(dir, fmt.Sprintf("%s-%d.addr", name, pid))
		var addr []byte
		c.Eventually(10*time.Second, path+" written", func() (err error) {
			addr, err = os.ReadFile(path)
			return err
		})
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=1", addr))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		prof, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// A CPU profile is gzip-compressed protobuf.
		if resp.StatusCode != 200 || len(prof) < 2 || prof[0] != 0x1f || prof[1] != 0x8b {
			t.Errorf("%s: CPU profile: HTTP %d, %d bytes %q", name, resp.StatusCode, len(prof), prof[:min(len(prof), 40)])
		}
	}

	before, err := networkCount(c)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		to := fmt.Sprintf("1555000%04d", i)
		code, _, body, err := c.PostMessage(context.Background(), to, fmt.Sprintf(`{"to":%q,"type":"text","text":{"body":"hi"}}`, to), "")
		if err != nil || code != 201 {
			t.Fatalf("post: HTTP %d %s %v", code, body, err)
		}
	}
	c.Eventually(10*time.Second, "three more messages counted", func() error {
		n, err := networkCount(c)
		if err != nil {
			return err
		}
		if n-before != 3 || int64(len(c.NetworkMessages(""))) != n {
			return fmt.Errorf("count %d (was %d), listed %d", n, before, len(c.NetworkMessages("")))
		}
		return nil
	})
}
