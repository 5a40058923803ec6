// Command transport-simnet is the transport plugin for the simulated
// messaging network (simnetd). A coreapp starts it through
// transport.Start; run by hand it only says that it is a plugin.
//
// Environment:
//
//	SIMNET_ADDR      the network's plugin listener (default 127.0.0.1:7700)
//	SIMNET_LOG_LEVEL debug, info, warn or error (default info)
package main

import (
	"cmp"
	"log/slog"
	"os"

	"github.com/multiconnect/multiconnect/internal/pprofserve"
	"github.com/multiconnect/multiconnect/plugins/simnet"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

func main() {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cmp.Or(os.Getenv("SIMNET_LOG_LEVEL"), "info"))); err != nil {
		level = slog.LevelInfo
	}
	// Created before Serve redirects os.Stderr, so logs reach the host.
	log := transport.NewPluginLogger(level)
	slog.SetDefault(log)
	pprofserve.Start("transport-simnet") // profiles for benchmarks, only when MC_PPROF_DIR is set
	addr := cmp.Or(os.Getenv("SIMNET_ADDR"), "127.0.0.1:7700")
	log.Info("transport-simnet starting", "network", addr, "pid", os.Getpid())
	transport.Serve(simnet.NewTransport(addr, log))
}
