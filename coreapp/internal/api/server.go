package api

import (
	"context"
	"database/sql"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/coreapp/internal/slots"
	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Server serves the coreapp's port; HTTP makes the fasthttp server.
type Server struct {
	Deps
	// metricsHandler serves /metrics, made at its first scrape.
	metricsOnce    sync.Once
	metricsHandler fasthttp.RequestHandler
}

// New makes the server.
func New(d Deps) *Server { return &Server{Deps: d} }

// Deps is what the port needs from the process and the stages.
type Deps struct {
	ID       node.Identity
	Secret   string // the cluster secret every request must carry
	DB       *sql.DB
	Log      *slog.Logger
	Settings *settings.Cache
	Plugins  *transport.Supervisor // the network's REST calls, health
	// Claim is the holder: the status every user route checks, and the
	// masters' requests.
	Claim interface {
		Status() claim.Status
		DBAgeMS() int64
		Nudge()
		Assign(shard int, epoch int64) bool
		Release(shard int, epoch int64, wait time.Duration) (released, ok bool)
	}
	Accept interface {
		Serve(ctx *fasthttp.RequestCtx)
	} // POST /v1/messages
	Contacts interface {
		Serve(ctx *fasthttp.RequestCtx)
	} // POST /v1/contacts
	Media interface {
		Upload(ctx *fasthttp.RequestCtx)
		Download(ctx *fasthttp.RequestCtx, id string)
		Remove(ctx *fasthttp.RequestCtx, id string)
	}
	Slots slots.Slots // around the slot routes
	// Registry is served on /metrics, after MeasureDepth updated the
	// backlog gauges.
	Registry     prometheus.Gatherer
	MeasureDepth func(ctx context.Context)
	Heartbeats   prometheus.Counter
	// DBError counts and logs a failed database operation.
	DBError func(op string, err error)
}
