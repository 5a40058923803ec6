package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/clustertest"
)

// callbackHook is the user's webhook: it keeps every callback the cluster
// posts.
type callbackHook struct {
	mu       sync.Mutex
	statuses map[string][]string // our message id -> statuses in arrival order
	errors   map[string][]int    // our message id -> error codes of failed statuses
	inbound  map[string]string   // wamid -> text body
	from     map[string][]string // contact -> text bodies of its inbound messages in arrival order
	url      string
}

func startCallbackHook(t *testing.T) *callbackHook {
	h := &callbackHook{statuses: map[string][]string{}, errors: map[string][]int{}, inbound: map[string]string{}, from: map[string][]string{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var doc struct {
			Statuses []struct {
				ID     string `json:"id"`
				Status string `json:"status"`
				Errors []struct {
					Code int `json:"code"`
				} `json:"errors"`
			} `json:"statuses"`
			Messages []struct {
				ID   string `json:"id"`
				From string `json:"from"`
				Text struct {
					Body string `json:"body"`
				} `json:"text"`
			} `json:"messages"`
		}
		json.Unmarshal(b, &doc)
		h.mu.Lock()
		for _, s := range doc.Statuses {
			h.statuses[s.ID] = append(h.statuses[s.ID], s.Status)
			for _, e := range s.Errors {
				h.errors[s.ID] = append(h.errors[s.ID], e.Code)
			}
		}
		for _, m := range doc.Messages {
			h.inbound[m.ID] = m.Text.Body
			h.from[m.From] = append(h.from[m.From], m.Text.Body)
		}
		h.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	h.url = srv.URL
	return h
}

func (h *callbackHook) has(id, status string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.statuses[id] {
		if s == status {
			return true
		}
	}
	return false
}

// createdID is the message id of a 201 to POST /v1/messages.
func createdID(resp string) string {
	var doc struct {
		Messages []struct {
			ID string `json:"id"`
		} `json:"messages"`
	}
	if json.Unmarshal([]byte(resp), &doc) != nil || len(doc.Messages) != 1 {
		return ""
	}
	return doc.Messages[0].ID
}

// TestCloudAPIEndToEnd runs the whole cluster on the Cloud API transport:
// two masters, three coreapps with transport-cloudapi, two shards, the
// gateway with its /cloudapi/webhook route, MariaDB and the Graph API test
// server (graphapid), which validates every request against Meta's
// description and records who sent it. An On-Premises client's sends of
// several types reach it valid; their statuses come back through the
// gateway's webhook route to the user's webhook as the original's
// callbacks; an inbound message reaches the user's webhook; mark-as-read
// reaches the server; no secret appears in a log, /v1/support or the
// stats. Then, under load, the primary coreapp of shard 0 is
// SIGKILLed and that of shard 1 frozen (SIGSTOP) until replaced, then woken:
// every accepted message reaches the server once, in order per recipient,
// and no shard ever has two senders.
func TestCloudAPIEndToEnd(t *testing.T) {
	cl := clustertest.New(t, clustertest.Options{Masters: 2, Coreapps: 3, Shards: 2, CloudAPI: true})
	c := &testCluster{t: t, srv: cl.DB, db: cl.SQL, secret: cl.Secret, realMasters: true}
	c.shards.Store(2)
	g := c.startGateway(fmt.Sprintf("cloudapi_app_secret %s\n\t\tcloudapi_verify_token %s\n\t\tcloudapi_phone_number_id %s",
		clustertest.CloudAppSecret, clustertest.CloudVerifyToken, clustertest.CloudPhoneID))
	if err := cl.GraphDo("POST", "/_test/webhook_url", map[string]string{"url": g.url + "/cloudapi/webhook"}, nil); err != nil {
		t.Fatal(err)
	}
	token := g.loginAdmin()
	hook := startCallbackHook(t)
	st, body := g.do("PATCH", "/v1/settings/application", fmt.Sprintf(`{"webhooks":{"url":%q,"message":{"sent":true,"delivered":true,"read":true}},
		"callback_backoff_delay_ms":100,"max_callback_backoff_delay_ms":500}`, hook.url), jsonHeaders(bearer(token)))
	if st != 200 {
		t.Fatalf("PATCH settings: HTTP %d %s", st, body)
	}
	time.Sleep(700 * time.Millisecond) // settings reach every node within a poll

	send := func(body string) string {
		t.Helper()
		st, resp := g.do("POST", "/v1/messages", body, jsonHeaders(bearer(token)))
		if st != http.StatusCreated {
			t.Fatalf("POST /v1/messages %s: HTTP %d %s", body, st, resp)
		}
		return createdID(resp)
	}

	// 1. Sends of several types, to recipients of both shards.
	to0, to1 := recipientFor(t, 0, 2, 101), recipientFor(t, 1, 2, 102)
	first := send(fmt.Sprintf(`{"to":%q,"type":"text","preview_url":true,"text":{"body":"hello https://example.com"}}`, to0))
	bodies := []string{
		fmt.Sprintf(`{"to":%q,"type":"image","image":{"link":"https://example.com/a.png","caption":"a picture"}}`, to1),
		fmt.Sprintf(`{"to":%q,"type":"template","template":{"namespace":"ns","name":"order_update","language":{"policy":"deterministic","code":"en"},"components":[{"type":"body","parameters":[{"type":"text","text":"Ann"}]},{"type":"button","sub_type":"quick_reply","index":0,"parameters":[{"type":"payload","payload":"yes"}]}]}}`, to0),
		fmt.Sprintf(`{"to":%q,"type":"hsm","hsm":{"namespace":"ns","element_name":"hello_world","language":{"policy":"deterministic","code":"en"},"localizable_params":[{"default":"Ann"}]}}`, to1),
		fmt.Sprintf(`{"to":%q,"type":"location","location":{"latitude":37.4847,"longitude":-122.1477,"name":"HQ"}}`, to0),
		fmt.Sprintf(`{"to":%q,"type":"contacts","contacts":[{"name":{"formatted_name":"John Smith"},"phones":[{"phone":"+1 650 555 1234","type":"WORK"}]}]}`, to1),
		fmt.Sprintf(`{"to":%q,"type":"interactive","interactive":{"type":"button","body":{"text":"Keep it?"},"action":{"buttons":[{"type":"reply","reply":{"id":"y","title":"Yes"}}]}}}`, to0),
		fmt.Sprintf(`{"to":%q,"context":{"message_id":%q},"text":{"body":"a reply"}}`, to0, first),
		fmt.Sprintf(`{"to":%q,"type":"reaction","reaction":{"message_id":%q,"emoji":"\ud83d\udc4d"}}`, to0, first),
	}
	ids := []string{first}
	for _, b := range bodies {
		ids = append(ids, send(b))
	}
	var firstWAMID string
	cl.Eventually(30*time.Second, "every send taken by the Graph API test server", func() error {
		st := cl.GraphState()
		got := map[string]string{}
		for _, m := range st.Messages {
			got[m.Opaque] = string(m.Body)
			if m.Opaque == first {
				firstWAMID = m.WamID
			}
		}
		for _, id := range ids {
			if _, ok := got[id]; !ok {
				return fmt.Errorf("%s not taken (it has %d messages)", id, len(st.Messages))
			}
		}
		for _, id := range ids[len(ids)-2:] {
			if !strings.Contains(got[id], firstWAMID) {
				return fmt.Errorf("the reply or reaction %s does not name the wamid %s: %s", id, firstWAMID, got[id])
			}
		}
		return nil
	})
	cl.Eventually(30*time.Second, "sent, delivered and read callbacks for every send", func() error {
		for _, id := range ids {
			for _, s := range []string{"sent", "delivered", "read"} {
				if !hook.has(id, s) {
					return fmt.Errorf("no %s callback for %s", s, id)
				}
			}
		}
		return nil
	})

	// A message the network cannot deliver: a failed status with the
	// original's error code.
	if err := cl.GraphDo("POST", "/_test/fail", map[string]any{"count": 1, "code": 131026}, nil); err != nil {
		t.Fatal(err)
	}
	undeliverable := send(fmt.Sprintf(`{"to":%q,"text":{"body":"to a phone that cannot take it"}}`, to1))
	cl.Eventually(30*time.Second, "a failed callback with 1026", func() error {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		for _, c := range hook.errors[undeliverable] {
			if c == 1026 {
				return nil
			}
		}
		return fmt.Errorf("statuses %v errors %v", hook.statuses[undeliverable], hook.errors[undeliverable])
	})

	// 2. An inbound message reaches the user's webhook; 3. marking it read
	// reaches the server.
	from := recipientFor(t, 1, 2, 103)
	var in struct {
		WamID string `json:"id"`
	}
	if err := cl.GraphDo("POST", "/_test/inbound", map[string]any{"from": from, "name": "Ann", "type": "text", "content": map[string]string{"body": "hi there"}}, &in); err != nil {
		t.Fatal(err)
	}
	cl.Eventually(30*time.Second, "the inbound message at the user's webhook", func() error {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		if hook.inbound[in.WamID] != "hi there" {
			return fmt.Errorf("inbound callbacks: %v", hook.inbound)
		}
		return nil
	})
	cl.Eventually(10*time.Second, "mark-as-read answered", func() error {
		// A wamid is base64: a client escapes its "/" and "+" in the path.
		st, body := g.do("PUT", "/v1/messages/"+url.PathEscape(in.WamID), `{"status":"read"}`, jsonHeaders(bearer(token)))
		if st != 200 {
			return fmt.Errorf("PUT /v1/messages/%s: HTTP %d %s", in.WamID, st, body)
		}
		return nil
	})
	read := false
	for _, r := range cl.GraphState().Reads {
		read = read || (r.MessageID == in.WamID && r.Known)
	}
	if !read {
		t.Errorf("the mark-as-read of %s did not reach the Graph API test server", in.WamID)
	}

	// 4. SIGKILL of shard 0's primary under load, then SIGSTOP of shard 1's
	// for longer than its claim (its plugin, not stopped, must stop sending
	// at the claim's deadline by itself), then SIGCONT.
	primaries := cl.WaitAllShardsConnected(15 * time.Second)
	victim := cl.CoreappByAddr(primaries[0].Node)
	frozen := cl.CoreappByAddr(primaries[1].Node)
	if victim == nil || frozen == nil {
		t.Fatalf("no coreapps at %s, %s", primaries[0].Node, primaries[1].Node)
	}
	var mu sync.Mutex
	accepted := map[string][]string{} // recipient -> our ids in the order they were accepted
	// Requests whose answer was neither 201 nor a refusal (the coreapp was
	// killed or frozen while the gateway waited): the message may have been
	// committed, so it may reach the server, without an id to name it.
	unknown := map[string]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		to := recipientFor(t, i%2, 2, 200+i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				st, resp := g.do("POST", "/v1/messages", fmt.Sprintf(`{"to":%q,"text":{"body":"load %d"}}`, to, n), jsonHeaders(bearer(token)))
				if st == http.StatusCreated {
					mu.Lock()
					accepted[to] = append(accepted[to], createdID(resp))
					mu.Unlock()
				} else if st == 0 || st >= 500 {
					mu.Lock()
					unknown[to]++
					mu.Unlock()
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	// Inbound messages keep coming from contacts of both shards meanwhile.
	var injected []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			var in struct {
				ID string `json:"id"`
			}
			from := recipientFor(t, n%2, 2, 300+n%4)
			if err := cl.GraphDo("POST", "/_test/inbound", map[string]any{"from": from, "name": "Bo", "type": "text",
				"content": map[string]string{"body": fmt.Sprintf("inbound %d", n)}}, &in); err == nil {
				mu.Lock()
				injected = append(injected, in.ID)
				mu.Unlock()
			}
		}
	}()
	time.Sleep(1500 * time.Millisecond)
	victim.Signal(syscall.SIGKILL)
	killedAt := time.Now()
	newPrimary := cl.WaitCloudPrimary(0, victim.Addr, 30*time.Second)
	t.Logf("shard 0: %s killed, %s primary after %v", victim.Addr, newPrimary, time.Since(killedAt).Round(time.Millisecond))
	// The killed coreapp comes back as the spare that replaces the frozen one.
	victim.Wait(10 * time.Second)
	cl.Coreapps = append(cl.Coreapps, cl.Restart(victim, "coreapp1-again"))
	time.Sleep(2000 * time.Millisecond)
	frozen.Signal(syscall.SIGSTOP)
	frozenAt := time.Now()
	thawed := cl.WaitCloudPrimary(1, frozen.Addr, 30*time.Second)
	t.Logf("shard 1: %s frozen, %s primary after %v", frozen.Addr, thawed, time.Since(frozenAt).Round(time.Millisecond))
	time.Sleep(1000 * time.Millisecond)
	frozen.Signal(syscall.SIGCONT) // it wakes up deposed: it must not send
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()

	total := 0
	for _, l := range accepted {
		total += len(l)
	}
	cl.Eventually(60*time.Second, fmt.Sprintf("all %d messages accepted under load taken by the server", total), func() error {
		st := cl.GraphState()
		seen := map[string]int{}
		for _, m := range st.Messages {
			seen[m.Opaque]++
		}
		missing := 0
		for _, l := range accepted {
			for _, id := range l {
				if seen[id] == 0 {
					missing++
				}
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d not taken yet", missing, total)
		}
		return nil
	})
	gs := cl.GraphState()
	byTo := map[string][]string{}
	count := map[string]int{}
	for _, m := range gs.Messages {
		count[m.Opaque]++
		if count[m.Opaque] == 1 {
			byTo[m.To] = append(byTo[m.To], m.Opaque)
		}
	}
	for to, want := range accepted {
		// Only the load's messages went to these recipients: the accepted
		// ones in order, and at most one per request whose answer was lost.
		isAccepted := map[string]bool{}
		for _, id := range want {
			isAccepted[id] = true
		}
		var got []string
		extra := 0
		for _, id := range byTo[to] {
			if isAccepted[id] {
				got = append(got, id)
			} else {
				extra++
			}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("recipient %s: the server took the accepted messages in the order %v, accepted in the order %v", to, got, want)
		}
		if extra > unknown[to] {
			t.Errorf("recipient %s: the server took %d messages that were not accepted, but only %d requests went unanswered", to, extra, unknown[to])
		}
		for _, id := range want {
			if count[id] != 1 {
				t.Errorf("%s reached the server %d times", id, count[id])
			}
		}
	}
	if v := cl.GraphViolations(); v.Count != 0 {
		t.Errorf("two senders for one shard: %+v", v)
	}
	cl.Eventually(90*time.Second, fmt.Sprintf("%d inbound messages and the read statuses of %d sends at the user's webhook", len(injected), total), func() error {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		for _, id := range injected {
			if _, ok := hook.inbound[id]; !ok {
				return fmt.Errorf("inbound %s not delivered", id)
			}
		}
		for _, l := range accepted {
			for _, id := range l {
				ok := false
				for _, st := range hook.statuses[id] {
					ok = ok || st == "read"
				}
				if !ok {
					return fmt.Errorf("no read status for %s (has %v)", id, hook.statuses[id])
				}
			}
		}
		return nil
	})
	// No secret in any node's log, the gateway's, /v1/support or the stats.
	var docs []string
	for _, p := range append(append([]*clustertest.Proc{}, cl.Masters...), cl.Coreapps...) {
		docs = append(docs, p.Name+" log\n"+p.Log())
	}
	if b, err := os.ReadFile(g.log); err == nil {
		docs = append(docs, "gateway log\n"+string(b))
	}
	for _, path := range []string{"/v1/support", "/v1/stats/app", "/v1/stats/db", "/v1/health"} {
		st, body := g.do("GET", path, "", bearer(token))
		docs = append(docs, fmt.Sprintf("GET %s (HTTP %d)\n%s", path, st, body))
	}
	for _, d := range docs {
		for _, secret := range []string{clustertest.CloudToken, clustertest.CloudAppSecret, clustertest.CloudVerifyToken} {
			if strings.Contains(d, secret) {
				t.Errorf("a secret appears in %s", strings.SplitN(d, "\n", 2)[0])
			}
		}
	}
	t.Logf("%d messages accepted under load, all taken once and in order, each read status at the webhook; %d inbound messages delivered; %d requests recorded",
		total, len(injected), len(gs.Requests))
}
