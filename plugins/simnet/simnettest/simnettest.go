// Package simnettest starts the pieces a test needs to put the
// transport-simnet plugin on real wires: the simulated network in process on
// a loopback port, and the plugin binary built from this module. It is a
// test harness, not part of any daemon.
package simnettest

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/multiconnect/multiconnect/plugins/simnet"
)

// PluginPackage is the import path of the transport-simnet plugin command.
const PluginPackage = "github.com/multiconnect/multiconnect/plugins/simnet/cmd/transport-simnet"

// Network serves a simulated network configured by cfg on a free loopback
// port until the test ends, and points plugins started afterwards at it
// (SIMNET_ADDR, which t.Setenv restores).
func Network(t *testing.T, cfg simnet.Config) *simnet.Server {
	t.Helper()
	srv := simnet.NewServer(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("simnet listener: %v", err)
	}
	go srv.Serve(ln) //nolint:errcheck // returns nil once closed
	t.Cleanup(func() { srv.Close() })
	t.Setenv("SIMNET_ADDR", ln.Addr().String())
	return srv
}

// BuildPlugin builds transport-simnet into dir and returns its path. go test
// puts its own go first on PATH, so the build matches the test's toolchain.
func BuildPlugin(dir string) (string, error) {
	bin := filepath.Join(dir, "transport-simnet")
	if out, err := exec.Command("go", "build", "-o", bin, PluginPackage).CombinedOutput(); err != nil {
		return "", fmt.Errorf("build transport-simnet: %w\n%s", err, out)
	}
	return bin, nil
}

// Plugin is BuildPlugin into the test's temporary directory; it fails the
// test when the build does.
func Plugin(t *testing.T) string {
	t.Helper()
	bin, err := BuildPlugin(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}
