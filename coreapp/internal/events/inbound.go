package events

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/internal/pause"
)

// indexInbound records who sent each inbound message of batch
// (inbound_messages), retrying while the database refuses and this node is
// a primary. It reports whether the batch may be acknowledged: false
// leaves its events with the network for the shard's next holder.
func (w *Writer) indexInbound(ctx context.Context, batch []*callback) bool {
	var sb strings.Builder
	var args []any
	for _, cb := range batch {
		if cb.kind != kindInbound || cb.netSeq == 0 {
			continue
		}
		id := inboundID(cb.payload)
		if id == "" || len(id) > 128 {
			continue
		}
		if len(args) > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`(?,?,NOW(6))`)
		args = append(args, id, cb.recipient)
	}
	if len(args) == 0 {
		return true
	}
	// A network's ids can start again (simnet's after a restart): the
	// newest sender of an id is the one a client was told about.
	q := `INSERT INTO inbound_messages (id, sender, received_at) VALUES ` + sb.String() +
		` ON DUPLICATE KEY UPDATE sender = VALUES(sender), received_at = VALUES(received_at)`
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := w.DB.ExecContext(qctx, q, args...)
		cancel()
		if err == nil {
			return true
		}
		w.DBError("index inbound messages", err)
		if !w.Claim.Status().Primary || !pause.For(ctx, callbackRetry) {
			return false
		}
	}
}

// inboundID is the message id of a stored inbound callback's payload.
func inboundID(payload []byte) string {
	var p struct {
		Message struct {
			ID string `json:"id"`
		} `json:"message"`
	}
	_ = json.Unmarshal(payload, &p)
	return p.Message.ID
}

// securityNotice reports whether a stored inbound callback is the
// network's user_identity_changed system message, which the webhook gets
// only with show_security_notifications.
func securityNotice(payload []byte) bool {
	var p struct {
		Message struct {
			System struct {
				Type string `json:"type"`
			} `json:"system"`
		} `json:"message"`
	}
	_ = json.Unmarshal(payload, &p)
	return p.Message.System.Type == "user_identity_changed"
}
