// Command transport-cloudapi is the transport plugin for the WhatsApp
// Cloud API (Meta's Graph API). A coreapp starts it through transport.Start
// when MC_TRANSPORT names it; it inherits the coreapp's environment.
//
// Environment (README, "Cloud API transport"):
//
//	MC_CLOUDAPI_PHONE_NUMBER_ID  the business phone number's id (required)
//	MC_CLOUDAPI_ACCESS_TOKEN     a system user access token (required, secret)
//	MC_CLOUDAPI_APP_SECRET       the app secret (the gateway's; secret)
//	MC_CLOUDAPI_VERIFY_TOKEN     the webhook verify token (the gateway's; secret)
//	MC_CLOUDAPI_GRAPH_VERSION    default v23.0
//	MC_CLOUDAPI_BASE_URL         default https://graph.facebook.com
//	MC_CLOUDAPI_THROUGHPUT       messages/s of the number, default 80 (0: unlimited)
//	MC_CLOUDAPI_UNKNOWN_OUTCOME  what to do with a send whose outcome is unknown
//	MC_CLOUDAPI_LOG_LEVEL        debug, info, warn or error (default info)
//	MC_MEDIA_DIR, WA_DB_*        the coreapp's: shared media, the cluster's MySQL
package main

import (
	"cmp"
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/multiconnect/multiconnect/internal/database"
	"github.com/multiconnect/multiconnect/internal/pprofserve"
	"github.com/multiconnect/multiconnect/plugins/cloudapi"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

func main() {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cmp.Or(os.Getenv("MC_CLOUDAPI_LOG_LEVEL"), "info"))); err != nil {
		level = slog.LevelInfo
	}
	// Created before Serve redirects os.Stderr, so logs reach the host.
	log := transport.NewPluginLogger(level)
	slog.SetDefault(log)
	pprofserve.Start("transport-cloudapi") // profiles for benchmarks, only when MC_PPROF_DIR is set
	cfg, err := cloudapi.FromEnv(os.Getenv)
	if err != nil {
		log.Error("transport-cloudapi cannot start", "err", err)
		os.Exit(2)
	}
	dbc, err := database.FromEnv()
	if err != nil {
		log.Error("transport-cloudapi cannot start: database configuration", "err", err)
		os.Exit(2)
	}
	// A few statements per send and one poll of the inbound rows every
	// 100 ms: a small pool, counted in the cluster's connection budget.
	dbc.MaxOpen = database.CloudAPIPluginPool
	ctx, cancel := context.WithTimeout(context.Background(), dbc.Wait+5*time.Second)
	db, err := database.Open(ctx, dbc)
	cancel()
	if err != nil {
		log.Error("transport-cloudapi cannot start: database", "err", err)
		os.Exit(1)
	}
	t, err := cloudapi.Open(cfg, cloudapi.Options{DB: db, Logger: log})
	if err != nil {
		log.Error("transport-cloudapi cannot start", "err", err)
		os.Exit(2)
	}
	log.Info("transport-cloudapi starting", "config", cfg, "pid", os.Getpid())
	transport.Serve(t)
	db.Close()
}
