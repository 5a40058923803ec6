// Command graphapid runs the Graph API test server (package graphtest): a
// stand-in for Meta's WhatsApp Cloud API that validates every request
// against Meta's OpenAPI description, sends signed webhooks to the gateway
// and records what it saw for tests (control API under /_test/).
//
// It prints the base URL it serves on (one line on stdout), so that a test
// can listen on port 0 and read where it went.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		slog.Error("graphapid failed", "err", err)
		os.Exit(1)
	}
}

// run serves until ctx ends, printing the base URL to stdout.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	flag := flag.NewFlagSet("graphapid", flag.ContinueOnError)
	listen := flag.String("listen", "127.0.0.1:0", "address to serve the Graph API and the control API on")
	phones := flag.String("phone-number-id", "106540352242922", "phone number id(s) served, comma-separated (digits)")
	token := flag.String("access-token", "", "the access token requests must carry (Authorization: Bearer)")
	secret := flag.String("app-secret", "", "signs webhooks (X-Hub-Signature-256)")
	webhook := flag.String("webhook-url", "", "where webhooks go: the gateway's /cloudapi/webhook")
	waba := flag.String("waba-id", "", "business account id in webhooks (default 100000000000001)")
	throughput := flag.Float64("throughput", 80, "messages/s per number (0: unlimited); beyond: error 130429")
	pair := flag.Duration("pair-interval", 0, "least time between two messages to one recipient (Meta: about 6s; 0: none); sooner: error 131056")
	statusDelay := flag.Duration("status-delay", 10*time.Millisecond, "pause between a message's statuses")
	retryFor := flag.Duration("retry-for", time.Minute, "give up an unacknowledged webhook after this long (Meta: 7 days)")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	if err := flag.Parse(args); err != nil {
		return err
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	if *token == "" {
		return errors.New("-access-token is required")
	}
	srv, err := graphtest.New(graphtest.Config{
		PhoneNumberIDs: strings.Split(*phones, ","),
		AccessToken:    *token,
		AppSecret:      *secret,
		WebhookURL:     *webhook,
		WABAID:         *waba,
		Throughput:     *throughput,
		PairInterval:   *pair,
		StatusDelay:    *statusDelay,
		RetryFor:       *retryFor,
		Logger:         log,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fmt.Fprintf(stdout, "http://%s\n", ln.Addr())
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	log.Info("graphapid serving", "addr", ln.Addr().String(), "phone_number_ids", *phones, "webhook_url", *webhook)

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return hs.Shutdown(sctx)
}
