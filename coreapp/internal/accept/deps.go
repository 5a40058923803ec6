package accept

import (
	"context"
	"database/sql"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/coreapp/internal/outbox"
	"github.com/multiconnect/multiconnect/coreapp/internal/slots"
	"github.com/multiconnect/multiconnect/internal/node"
	"github.com/multiconnect/multiconnect/internal/settings"
)

// Deps is what the acceptor needs from the process and the other stages.
type Deps struct {
	ID       node.Identity
	DB       *sql.DB
	Log      *slog.Logger
	Settings *settings.Cache // the media providers' version
	// Claim says whether this coreapp is the primary, and fences the
	// group commit's transaction (the holder).
	Claim interface {
		Status() claim.Status
		Fence(ctx context.Context, tx *sql.Tx, st claim.Status) (shards int, err error)
	}
	// Outbox takes the rows a group commit stored, or reads them from the
	// database after a commit whose outcome is unknown.
	Outbox interface {
		Handover(st claim.Status, rows []outbox.Row)
		Rescan()
	}
	// Media checks the uploads a message names and stores what a media
	// provider's link returned.
	Media interface {
		CheckIDs(ctx context.Context, ids []string) (code int, details string)
		Save(ctx context.Context, mimeType string, body []byte) (id string, code int, details string)
	}
	Slots   slots.Slots // around the media check
	Metrics Metrics
	// DBError counts and logs a failed database operation.
	DBError func(op string, err error)
}

// Metrics are the acceptor's, registered by the process.
type Metrics struct {
	Accepted     prometheus.Counter
	AcceptBatch  prometheus.Histogram
	AcceptCommit prometheus.Histogram
}

// Precompile compiles the message schema, so that the first message's
// request does not; an error means every message will be refused.
func Precompile() error {
	_, err := messageSchema()
	return err
}
