package outbox

import (
	"context"
	"database/sql"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Deps is what the outbox needs from the process and the other stages.
type Deps struct {
	DB       *sql.DB
	Log      *slog.Logger
	Settings *settings.Cache
	Plugins  *transport.Supervisor
	Claim    interface{ Status() claim.Status }
	// Failures turns refused sends into failed statuses (the events
	// stage's callback writer) and returns once they are stored.
	Failures interface {
		SendFailed(ctx context.Context, shard int, failed []FailedSend) error
	}
	// Delivered counts messages the network confirmed.
	Delivered prometheus.Counter
}
