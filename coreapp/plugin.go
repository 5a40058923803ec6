package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// plugins runs the transport plugin and restarts it when it crashes. Each
// start is a new generation: a connection made on an older generation is
// gone, so the holder reconnects (same shard, same epoch) on the new one.
type plugins struct {
	path     string
	log      *slog.Logger
	onCrash  func()
	mu       sync.Mutex
	p        *transport.Plugin
	gen      uint64
	info     transport.Info
	restarts func()
}

// start launches the plugin and waits until it can describe its network.
func (s *plugins) start(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := s.launch(ctx)
		if err == nil {
			return nil
		}
		if attempt == 0 || attempt%20 == 0 {
			s.log.Warn("transport plugin not ready; retrying", "plugin", s.path, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("start transport plugin %s: %w", s.path, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (s *plugins) launch(ctx context.Context) error {
	p, err := transport.Start(s.path, s.log)
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
	s.log.Info("transport plugin started", "plugin", s.path, "pid", p.Pid(), "network", info.Name, "keepalive", info.KeepaliveTimeout.String())
	return nil
}

// watch restarts the plugin whenever its process has exited.
func (s *plugins) watch(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			s.kill()
			return
		case <-time.After(100 * time.Millisecond):
		}
		s.mu.Lock()
		p := s.p
		s.mu.Unlock()
		if p == nil || !p.Exited() {
			continue
		}
		s.log.Warn("transport plugin exited; restarting", "pid", p.Pid())
		if s.restarts != nil {
			s.restarts()
		}
		if err := s.start(ctx); err != nil {
			return
		}
		if s.onCrash != nil {
			s.onCrash()
		}
	}
}

// withTransport calls f with the live transport and its generation; it does
// nothing while the plugin is down.
func (s *plugins) withTransport(f func(t transport.Transport, gen uint64)) {
	s.mu.Lock()
	p, gen := s.p, s.gen
	s.mu.Unlock()
	if p == nil || p.Exited() {
		return
	}
	f(p.Transport(), gen)
}

// ok reports whether a plugin is running.
func (s *plugins) ok() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p != nil && !s.p.Exited()
}

// keepalive is the network's keepalive timeout as the plugin reported it.
func (s *plugins) keepalive() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info.KeepaliveTimeout
}

// kill stops the plugin process and reports whether it is certainly gone.
func (s *plugins) kill() bool {
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
