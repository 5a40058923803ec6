// Package pprofserve lets a benchmark take CPU profiles of the daemons it
// starts. It is off unless MC_PPROF_DIR is set: then the daemon serves
// net/http/pprof on a loopback port of its own (never on its public or
// internal listener) and writes that port's address to
// $MC_PPROF_DIR/<name>-<pid>.addr, where the benchmark finds it.
package pprofserve

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"
)

// EnvDir names the environment variable that turns profiling on.
const EnvDir = "MC_PPROF_DIR"

// Start serves the profiles when MC_PPROF_DIR is set, and does nothing
// otherwise. A failure is logged, not fatal: profiling must never stop a
// daemon from running.
func Start(name string) {
	dir := os.Getenv(EnvDir)
	if dir == "" {
		return
	}
	if err := serve(dir, name); err != nil {
		slog.Warn("pprof listener not started", "err", err)
	}
}

func serve(dir, name string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("pprofserve: listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// Write-then-rename, so a reader never sees half an address.
	path := filepath.Join(dir, fmt.Sprintf("%s-%d.addr", name, os.Getpid()))
	if err := os.WriteFile(path+".tmp", []byte(ln.Addr().String()), 0o644); err != nil {
		ln.Close()
		return fmt.Errorf("pprofserve: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		ln.Close()
		return fmt.Errorf("pprofserve: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil {
			slog.Warn("pprof listener stopped", "err", err)
		}
	}()
	slog.Info("serving pprof", "addr", ln.Addr().String(), "file", path)
	return nil
}
