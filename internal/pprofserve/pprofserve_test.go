package pprofserve

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStart(t *testing.T) {
	// Unset, nothing listens and nothing is written (here: the working
	// directory, where an empty directory name would put the file).
	t.Setenv(EnvDir, "")
	Start("unset")
	if _, err := os.Stat(fmt.Sprintf("unset-%d.addr", os.Getpid())); !os.IsNotExist(err) {
		t.Fatalf("without %s Start wrote an address file (%v)", EnvDir, err)
	}

	dir := t.TempDir()

	t.Setenv(EnvDir, dir)
	Start("probe")
	addr, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("probe-%d.addr", os.Getpid())))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(addr), "127.0.0.1:") {
		t.Errorf("listens on %q, want loopback", addr)
	}
	resp, err := http.Get("http://" + string(addr) + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), os.Args[0]) {
		t.Errorf("cmdline: HTTP %d %q, want %q", resp.StatusCode, b, os.Args[0])
	}
}
