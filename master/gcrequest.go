package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/multiconnect/multiconnect/internal/webhook"
)

// gcInbound collects the inbound message index (schema 9) with the
// messages.
const gcInbound = `DELETE FROM inbound_messages WHERE received_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT ?`

// gcRequested guards against two on-demand collections at once.
var gcRequested atomic.Bool

// gcMessagesNow is PUT /v1/services/message/gc: the original's on-demand
// collection of messages. It answers at once that the collection is
// processing and runs it in the background: what the periodic collector
// removes of messages (sent or failed messages, delivered callbacks and
// inbound messages older than MC_GC_RETENTION), whether or not
// garbagecollector_enable.messages is on, since the operator asked. When it
// is done it posts the original's notification to webhooks.url. One
// collection runs at a time; asking again meanwhile answers processing too.
func (m *Master) gcMessagesNow(w http.ResponseWriter, r *http.Request) {
	if gcRequested.CompareAndSwap(false, true) {
		go func() {
			defer gcRequested.Store(false)
			m.runRequestedGC(context.Background())
		}()
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"services": map[string]any{"message": map[string]any{"gc": map[string]string{"status": "processing"}}},
		"meta":     meta(),
	})
}

// runRequestedGC collects and notifies the webhook.
func (m *Master) runRequestedGC(ctx context.Context) {
	ret := m.gc.retention.Microseconds()
	start := time.Now()
	var deleted int64
	var err error
	for _, q := range []struct{ table, query string }{
		{"messages", `DELETE FROM messages WHERE sent_at < NOW(6) - INTERVAL ? MICROSECOND AND state <> 0 LIMIT ?`},
		{"inbound_messages", gcInbound},
		{"callbacks", `DELETE FROM callbacks WHERE delivered_at < NOW(6) - INTERVAL ? MICROSECOND AND delivered = 1 LIMIT ?`},
	} {
		n, e := m.gcRows(ctx, q.table, q.query, ret)
		if q.table != "callbacks" { // callbacks are delivery records, not messages
			deleted += n
		}
		if e == nil && !m.lease.valid.Valid() {
			e = errors.New("this master lost the master lease during the collection")
		}
		if e != nil {
			err = e
			break
		}
	}
	gc := map[string]any{"messages_deleted": deleted, "node": m.id.Hostname + ":" + m.id.Container, "status": "complete"}
	if err != nil {
		gc["status"] = "failed"
		gc["errors"] = []map[string]any{{"code": 1000, "title": "Generic error", "details": err.Error()}}
	}
	m.log.Info("requested garbage collection finished", "messages_deleted", deleted, "status", gc["status"],
		"seconds", time.Since(start).Seconds())
	body, _ := json.Marshal(map[string]any{"services": []any{map[string]any{"message": map[string]any{"gc": gc}}}})
	m.notifyWebhook(ctx, body)
}

// notifyWebhook posts body to webhooks.url, retrying with the callbacks'
// backoff while this master is primary, for at most an hour. Nothing is
// posted without a webhook, as for every callback.
func (m *Master) notifyWebhook(ctx context.Context, body []byte) {
	client := &http.Client{Timeout: 20 * time.Second}
	deadline := time.Now().Add(time.Hour)
	for attempt := 1; ; attempt++ {
		s := m.settings.Get()
		if s.Webhooks.URL == "" || !m.lease.valid.Valid() || time.Now().After(deadline) {
			return
		}
		err := postJSON(ctx, client, s.Webhooks.URL, body)
		if err == nil {
			return
		}
		wait := s.CallbackBackoff(attempt)
		m.log.Warn("webhook did not take the garbage collection notification; retrying", "attempt", attempt, "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func postJSON(ctx context.Context, client *http.Client, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return webhook.Do(client, req)
}
