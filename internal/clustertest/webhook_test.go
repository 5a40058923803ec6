package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// hookReceiver is a webhook that refuses (HTTP 500) while failing is set,
// or a request naming one of the recipients in failFor, and records, in
// arrival order, the callbacks it took.
type hookReceiver struct {
	failing  atomic.Bool
	failFor  atomic.Pointer[map[string]bool]
	refused  atomic.Int64
	mu       sync.Mutex
	statuses []hookStatus
	statusAt []time.Time // when each status arrived
	inbound  []hookInbound
	srv      *http.Server
	url      string
}

type hookStatus struct {
	ID          string `json:"id"`
	Status      string `json:"status"`
	Timestamp   string `json:"timestamp"`
	RecipientID string `json:"recipient_id"`
}

type hookInbound struct {
	From      string `json:"from"`
	ID        string `json:"id"`
	Timestamp string `json:"timestamp"`
	Type      string `json:"type"`
	Text      struct {
		Body string `json:"body"`
	} `json:"text"`
}

func startHook(t *testing.T) *hookReceiver {
	h := &hookReceiver{}
	h.url, h.srv = serveHook(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var p struct {
			Statuses []hookStatus     `json:"statuses"`
			Contacts []map[string]any `json:"contacts"`
			Messages []hookInbound    `json:"messages"`
		}
		if err := json.Unmarshal(b, &p); err != nil || len(p.Contacts) != len(p.Messages) {
			t.Errorf("webhook payload not in the original's shape: %s", b)
		}
		refuse := h.failing.Load()
		if f := h.failFor.Load(); f != nil {
			for _, s := range p.Statuses {
				refuse = refuse || (*f)[s.RecipientID]
			}
			for _, m := range p.Messages {
				refuse = refuse || (*f)[m.From]
			}
		}
		if refuse {
			h.refused.Add(1)
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		h.mu.Lock()
		h.statuses = append(h.statuses, p.Statuses...)
		for range p.Statuses {
			h.statusAt = append(h.statusAt, time.Now())
		}
		h.inbound = append(h.inbound, p.Messages...)
		h.mu.Unlock()
	}))
	return h
}

// serveHook serves h on a loopback port until the test ends and returns
// its webhook URL.
func serveHook(t testing.TB, h http.Handler) (string, *http.Server) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/hook", srv
}

// A webhook that fails, and a primary coreapp SIGKILLed while it does,
// still get every status and inbound message once the webhook recovers,
// in order per recipient.
func TestWebhookFailsThenRecovers(t *testing.T) {
	c := New(t, Options{Shards: 1, Coreapps: 2})
	hook := startHook(t)
	hook.failing.Store(true)
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q,"max_concurrent_requests":6,"message":{"sent":true,"delivered":true,"read":true}},
		"callback_backoff_delay_ms":100,"max_callback_backoff_delay_ms":300}`, hook.url))
	time.Sleep(600 * time.Millisecond) // settings reach every node within one 200 ms poll

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tos := recipients(c, 8)
	const perRecipient = 6
	sent := map[string][]string{} // recipient -> accepted ids, in order
	inbound := map[string][]string{}
	for j := 0; j < perRecipient; j++ {
		for _, to := range tos {
			id, err := sendUntilAccepted(ctx, c, to, fmt.Sprintf(`{"to":%q,"text":{"body":"m%d"}}`, to, j), "")
			if err != nil {
				t.Fatal(err)
			}
			sent[to] = append(sent[to], id)
			inID := fmt.Sprintf("in-%s-%d", to, j)
			if err := c.SimnetPost("/v1/inbound", map[string]any{"shard": 0, "id": inID, "recipient": to,
				"payload": map[string]any{"type": "text", "text": map[string]string{"body": inID}}}); err != nil {
				t.Fatal(err)
			}
			inbound[to] = append(inbound[to], inID)
		}
	}
	c.Eventually(10*time.Second, "the failing webhook was tried and retried", func() error {
		if n := hook.refused.Load(); n < 10 {
			return fmt.Errorf("%d refused requests", n)
		}
		return nil
	})
	primary, err := c.ShardPrimary(0)
	if err != nil {
		t.Fatal(err)
	}
	c.CoreappByAddr(primary).Kill()
	c.WaitConnected(0, primary, 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	hook.failing.Store(false)

	c.Eventually(30*time.Second, "every callback delivered", func() error {
		return hook.missing(tos, sent, inbound)
	})
	hook.checkOrder(t, tos, sent, inbound)
	hook.mu.Lock()
	defer hook.mu.Unlock()
	t.Logf("webhook refused %d requests; took %d statuses and %d inbound messages", hook.refused.Load(), len(hook.statuses), len(hook.inbound))
}

// missing names a callback the webhook has not taken yet: the sent,
// delivered and read statuses of every message in sent and every inbound
// message in inbound (per recipient).
func (h *hookReceiver) missing(tos []string, sent, inbound map[string][]string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	got := map[string]bool{}
	for _, s := range h.statuses {
		got[s.ID+" "+s.Status] = true
	}
	for _, m := range h.inbound {
		got[m.ID] = true
	}
	for _, to := range tos {
		for _, id := range sent[to] {
			for _, st := range []string{"sent", "delivered", "read"} {
				if !got[id+" "+st] {
					return fmt.Errorf("no %s status for %s", st, id)
				}
			}
		}
		for _, id := range inbound[to] {
			if !got[id] {
				return fmt.Errorf("inbound message %s not delivered", id)
			}
		}
	}
	return nil
}

// checkOrder checks the order per recipient of what the webhook took.
func (h *hookReceiver) checkOrder(t *testing.T, tos []string, sent, inbound map[string][]string) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	// Order per recipient, judged on each callback's first delivery (a
	// failover may deliver one again): a message's statuses go sent,
	// delivered, read; one status of a recipient's messages follows the
	// order they were sent in; inbound messages come in the order written.
	first := map[string]int{}
	for i, s := range h.statuses {
		if s.RecipientID == "" || s.Timestamp == "" {
			t.Errorf("status without recipient_id or timestamp: %+v", s)
		}
		if _, ok := first[s.ID+" "+s.Status]; !ok {
			first[s.ID+" "+s.Status] = i
		}
	}
	for _, to := range tos {
		for k, id := range sent[to] {
			if !(first[id+" sent"] < first[id+" delivered"] && first[id+" delivered"] < first[id+" read"]) {
				t.Errorf("recipient %s message %s: statuses out of order", to, id)
			}
			if k > 0 {
				prev := sent[to][k-1]
				for _, st := range []string{"sent", "delivered", "read"} {
					if first[prev+" "+st] > first[id+" "+st] {
						t.Errorf("recipient %s: %s status of %s before that of the earlier %s", to, st, id, prev)
					}
				}
			}
		}
		var order []string
		seen := map[string]bool{}
		for _, m := range h.inbound {
			if m.From == to && !seen[m.ID] {
				seen[m.ID] = true
				order = append(order, m.ID)
				if m.Type != "text" || m.Text.Body != m.ID {
					t.Errorf("inbound message %s arrived as %+v", m.ID, m)
				}
			}
		}
		if fmt.Sprint(order) != fmt.Sprint(inbound[to]) {
			t.Errorf("recipient %s: inbound messages arrived as %v, want %v", to, order, inbound[to])
		}
	}
}
