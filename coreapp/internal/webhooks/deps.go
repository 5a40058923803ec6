package webhooks

import (
	"database/sql"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/internal/settings"
)

// Deps is what the dispatcher needs from the process and the claim.
type Deps struct {
	DB       *sql.DB
	Log      *slog.Logger
	Settings *settings.Cache
	// Claim says whether (and for which shard and epoch) this coreapp may
	// post: a term lasts while the status stays the same.
	Claim   interface{ Status() claim.Status }
	Metrics Metrics
	// DBError counts and logs a failed database operation.
	DBError func(op string, err error)
}

// Metrics are the dispatcher's, registered by the process.
type Metrics struct {
	CallbacksDelivered prometheus.Counter
	WebhookFailures    prometheus.Counter
}

// Callback kinds, as the callbacks table stores them.
const (
	KindStatus  = "status"
	KindInbound = "inbound"
)

// Callback is one stored (or remembered) webhook notification: the events
// stage makes them, the dispatcher posts them.
type Callback struct {
	Seq       int64 // callbacks.seq, or a negative memory sequence
	Shard     int
	Recipient string // the contact it is about: ordering is per recipient
	Kind      string // KindStatus or KindInbound
	Payload   []byte // one status object, or {"contact":...,"message":...}
}
