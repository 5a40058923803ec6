package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// DefaultPlugin is the plugin a host runs when MC_TRANSPORT is not set: the
// binary of that name beside the host's own, as `go build -o bin/ ./...`
// lays them out.
const DefaultPlugin = "transport-simnet"

// PathFromEnv returns the plugin binary a host should run: MC_TRANSPORT, or
// DefaultPlugin beside the running executable. It fails, saying what to
// fix, when that is not an executable file.
func PathFromEnv() (string, error) {
	p := os.Getenv("MC_TRANSPORT")
	if p == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("MC_TRANSPORT is not set and this program's own path is unknown: %w", err)
		}
		p = filepath.Join(filepath.Dir(exe), DefaultPlugin)
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("transport plugin (MC_TRANSPORT): %w", err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("transport plugin (MC_TRANSPORT) %s is not an executable file", p)
	}
	return p, nil
}

// ProcsFromEnv returns the plugin's GOMAXPROCS: MC_TRANSPORT_GOMAXPROCS, or
// 0 when it is not set, which gives the plugin the host's own setting
// (GOMAXPROCS if set, else Go's default: the CPUs it may use).
//
// Where several coreapps share a few cores, 1 suits transport-simnet: it
// relays one coreapp's batches to one connection and the network's events
// back, and with more than one P its goroutines woke each other across
// threads (futex) and idle threads spun looking for work, a fifth of its
// CPU in the throughput profile; with 1 it spent about a quarter less CPU
// per message (README, "Throughput"). The Cloud API plugin showed no such
// gain, so the default stays the host's.
func ProcsFromEnv() (int, error) {
	v := os.Getenv("MC_TRANSPORT_GOMAXPROCS")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("MC_TRANSPORT_GOMAXPROCS=%q: want a whole number, 0 or more (0: the host's own setting)", v)
	}
	return n, nil
}

// Supervisor runs one plugin process for a host and replaces it when it
// exits. Each start is a new generation: a connection made on an older
// generation is gone with its process. A coreapp starts the plugin at boot
// and lets Watch restart it; a master, which needs it only for rare
// registration calls, starts it on first use with Ensure.
type Supervisor struct {
	// Path is the plugin binary.
	Path string
	// Procs is the plugin's GOMAXPROCS (ProcsFromEnv); 0 leaves it the
	// host's.
	Procs int
	// Log receives the supervisor's and the plugin's logs.
	Log *slog.Logger
	// OnExit, if set, is called when Watch finds the plugin exited,
	// before it starts the next one.
	OnExit func()
	// OnRestart, if set, is called after Watch replaced a plugin that
	// exited.
	OnRestart func()

	startMu sync.Mutex // one start at a time (Ensure, Watch)
	mu      sync.Mutex // guards the fields below; never held across a start
	p       *Plugin
	gen     uint64
	info    Info
}

// Start launches the plugin and waits until it can describe its network,
// retrying until it can or ctx ends.
func (s *Supervisor) Start(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := s.launch(ctx)
		if err == nil {
			return nil
		}
		if attempt == 0 || attempt%20 == 0 {
			s.Log.Warn("transport plugin not ready; retrying", "plugin", s.Path, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("start transport plugin %s: %w", s.Path, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// launch makes one attempt at starting the plugin.
func (s *Supervisor) launch(ctx context.Context) error {
	p, err := Start(s.Path, s.Procs, s.Log)
	if err != nil {
		return err
	}
	ictx, cancel := context.WithTimeout(ctx, 3*time.Second)
	info, err := p.Transport().Info(ictx)
	cancel()
	if err != nil {
		p.Kill()
		return fmt.Errorf("transport info: %w", err)
	}
	s.mu.Lock()
	s.p, s.info = p, info
	s.gen++
	s.mu.Unlock()
	s.Log.Info("transport plugin started", "plugin", s.Path, "pid", p.Pid(), "network", info.Name, "keepalive", info.KeepaliveTimeout.String())
	return nil
}

// Ensure returns the live plugin's Transport, starting the plugin first
// (one attempt) if it never ran or has exited. Concurrent callers share
// one start.
func (s *Supervisor) Ensure(ctx context.Context) (Transport, error) {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	s.mu.Lock()
	p := s.p
	s.mu.Unlock()
	if p != nil && !p.Exited() {
		return p.Transport(), nil
	}
	if p != nil {
		s.Log.Warn("transport plugin exited; starting a new one", "pid", p.Pid())
		if s.OnExit != nil {
			s.OnExit()
		}
	}
	if err := s.launch(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p.Transport(), nil
}

// Watch restarts the plugin whenever its process has exited, until ctx
// ends; then it kills the plugin.
func (s *Supervisor) Watch(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			s.Kill()
			return
		case <-time.After(100 * time.Millisecond):
		}
		s.mu.Lock()
		p := s.p
		s.mu.Unlock()
		if p == nil || !p.Exited() {
			continue
		}
		if !s.restart(ctx, p) {
			return
		}
	}
}

// restart replaces the exited plugin p unless Ensure already did; it
// reports false when ctx ended first.
func (s *Supervisor) restart(ctx context.Context, p *Plugin) bool {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	s.mu.Lock()
	replaced := s.p != p
	s.mu.Unlock()
	if replaced {
		return true
	}
	s.Log.Warn("transport plugin exited; restarting", "pid", p.Pid())
	if s.OnExit != nil {
		s.OnExit()
	}
	if err := s.Start(ctx); err != nil {
		return false
	}
	if s.OnRestart != nil {
		s.OnRestart()
	}
	return true
}

// ErrNotRunning is what a host reports for a call it could not make
// because With found no plugin running (between a crash and its restart).
var ErrNotRunning = errors.New("transport plugin not running")

// With calls f with the live transport and its generation; it does nothing
// while the plugin is down.
func (s *Supervisor) With(f func(t Transport, gen uint64)) {
	s.mu.Lock()
	p, gen := s.p, s.gen
	s.mu.Unlock()
	if p == nil || p.Exited() {
		return
	}
	f(p.Transport(), gen)
}

// Running reports whether a plugin is running.
func (s *Supervisor) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p != nil && !s.p.Exited()
}

// Pid is the current plugin's process ID, 0 if none ever started.
func (s *Supervisor) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return 0
	}
	return s.p.Pid()
}

// Info is what the current plugin reported about its network when it
// started.
func (s *Supervisor) Info() Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

// Kill stops the plugin process and reports whether it is certainly gone.
func (s *Supervisor) Kill() bool {
	s.mu.Lock()
	p := s.p
	s.mu.Unlock()
	if p == nil {
		return true
	}
	p.Kill()
	for i := 0; i < 50 && !p.Exited(); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	return p.Exited()
}
