package claim

import (
	"database/sql"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Deps is what the holder needs from the process.
type Deps struct {
	ID node.Identity
	// DB is reserved for the shard claim (database.CoreappClaimPool): a
	// renewal never queues behind users' requests.
	DB       *sql.DB
	Log      *slog.Logger
	Settings *settings.Cache
	Plugins  *transport.Supervisor
	Metrics  Metrics
	// DBError counts and logs a failed database operation.
	DBError func(op string, err error)
	// Wake tells the stages that act only as the connected primary (the
	// outbox, the webhook dispatcher) that the status changed.
	Wake func()
}

// Metrics are the holder's gauges and counters, registered by the process;
// the holder registers its own histograms in Registry.
type Metrics struct {
	Registry  prometheus.Registerer
	Primary   prometheus.Gauge
	Shard     prometheus.Gauge
	Connects  prometheus.Counter
	StepDowns prometheus.Counter
}
