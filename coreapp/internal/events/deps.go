package events

import (
	"context"
	"database/sql"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiconnect/multiconnect/coreapp/internal/claim"
	"github.com/multiconnect/multiconnect/coreapp/internal/webhooks"
	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Deps is what the callback writer needs from the process and the other
// stages.
type Deps struct {
	DB       *sql.DB
	Log      *slog.Logger
	Settings *settings.Cache
	Plugins  *transport.Supervisor // the event stream, acknowledgements
	// Claim says whether this coreapp is the primary, fences the
	// transaction that stores a batch, and reconnects a shard whose ack
	// cursor stopped on a connection that stays up (the holder).
	Claim interface {
		Status() claim.Status
		Fence(ctx context.Context, tx *sql.Tx, st claim.Status) (shards int, err error)
		Redeliver(shard int)
	}
	// Media fetches the media of inbound messages before their callbacks
	// are stored (the media store).
	Media interface {
		FetchInbound(ctx context.Context, inbound [][]byte, auto []string)
	}
	// Dispatcher takes the callbacks that are not persisted, and is woken
	// when some were stored (the webhooks stage).
	Dispatcher interface {
		Remember(cbs []*webhooks.Callback)
		Nudge()
	}
	// CallbacksStored counts callbacks persisted for the webhook.
	CallbacksStored prometheus.Counter
	// Redeliveries counts the reconnections asked for because the ack
	// cursor stopped on a connection that stayed up (see Writer.redeliver).
	Redeliveries prometheus.Counter
	// DBError counts and logs a failed database operation.
	DBError func(op string, err error)
}

// inboundPayloads is the payloads of batch's inbound callbacks, whose
// media the media store may fetch.
func inboundPayloads(batch []*callback) [][]byte {
	var out [][]byte
	for _, cb := range batch {
		if cb.kind == kindInbound {
			out = append(out, cb.payload)
		}
	}
	return out
}

// forWebhooks is what the dispatcher keeps of callbacks it is handed in
// memory (callback_persist off).
func forWebhooks(cbs []*callback) []*webhooks.Callback {
	out := make([]*webhooks.Callback, len(cbs))
	for i, cb := range cbs {
		out[i] = &webhooks.Callback{Shard: cb.shard, Recipient: cb.recipient, Kind: cb.kind, Payload: cb.payload}
	}
	return out
}
