// Command simnetd runs the simulated messaging network: the plugin
// listener that transport-simnet connects to, and the HTTP API that tests
// use to inspect what the network saw (see package simnet).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/multiconnect/multiconnect/internal/pprofserve"
	"github.com/multiconnect/multiconnect/plugins/simnet"
)

func main() {
	pprofserve.Start("simnetd") // profiles for benchmarks, only when MC_PPROF_DIR is set
	if err := run(); err != nil {
		slog.Error("simnetd failed", "err", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:7700", "TCP address for plugin connections")
	httpAddr := flag.String("http", "127.0.0.1:7701", "address of the HTTP API")
	keepalive := flag.Duration("keepalive", time.Second, "drop a connection silent for this long")
	statusDelay := flag.Duration("status-delay", 20*time.Millisecond, "pause before each of a message's sent, delivered and read statuses")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	if *keepalive <= 0 {
		return errors.New("-keepalive must be positive")
	}

	srv := simnet.NewServer(simnet.Config{Keepalive: *keepalive, StatusDelay: *statusDelay, Logger: log})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen for plugins: %w", err)
	}
	hln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listen for the API: %w", err)
	}

	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	go func() { errc <- srv.ServeAPI(hln) }()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-errc:
	}
	if cerr := srv.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close: %w", cerr))
	}
	return err
}
