package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/clustertest"
)

// simnetInbound injects an inbound message from "from" and waits until a
// coreapp stored (acknowledged) it; it returns the message id.
func simnetInbound(t *testing.T, cl *clustertest.Cluster, from string) string {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"recipient": from, "payload": map[string]any{"type": "text", "text": map[string]string{"body": "hi"}}})
	resp, err := http.Post("http://"+cl.SimnetHTTP+"/v1/inbound/acked", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out struct {
		ID string `json:"id"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &out) != nil || out.ID == "" {
		t.Fatalf("inject an inbound message from %s: HTTP %d %s", from, resp.StatusCode, body)
	}
	return out.ID
}

type simnetRead struct {
	MessageID string `json:"message_id"`
	From      string `json:"from"`
	Shard     int    `json:"shard"`
	Node      string `json:"node"`
}

func simnetReads(t *testing.T, cl *clustertest.Cluster) []simnetRead {
	t.Helper()
	var out struct {
		Reads []simnetRead `json:"reads"`
	}
	if err := cl.SimnetJSON("/v1/reads", &out); err != nil {
		t.Fatal(err)
	}
	return out.Reads
}

// TestRestSurfaceWithRealNodes goes through the gateway to a real cluster
// (two masters, three coreapps, two shards, the simulated network):
// marking inbound messages read reaches the network over the connection
// of the sender's shard, before and after that shard's primary is killed;
// identities are read and acknowledged with the network; the first-party
// sticker packs are the network's; PUT /v1/services/message/gc collects
// and notifies the webhook; /metrics answers JSON and, asked, Prometheus.
func TestRestSurfaceWithRealNodes(t *testing.T) {
	// The webhook receiver keeps the service notifications it gets.
	var mu sync.Mutex
	var services, notices, all []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		all = append(all, string(b))
		if bytes.Contains(b, []byte(`"services"`)) {
			services = append(services, string(b))
		}
		if bytes.Contains(b, []byte(`user_identity_changed`)) {
			notices = append(notices, string(b))
		}
	}))
	defer hook.Close()

	cl, g := startWithRealNodes(t, clustertest.Options{Masters: 2, Coreapps: 3, Shards: 2,
		MasterEnv: []string{"MC_GC_RETENTION=1ms"}}, "")
	token := g.loginAdmin()
	auth := jsonHeaders(bearer(token))
	st, body := g.do("PATCH", "/v1/settings/application", `{"webhooks":{"url":"`+hook.URL+`"}}`, auth)
	expect(t, "set the webhook", st, body, 200, 0)

	// Mark read: the sender's shard's primary tells the network.
	conns := cl.WaitAllShardsConnected(15 * time.Second)
	from := recipientFor(t, 1, 2, 21)
	id := simnetInbound(t, cl, from)
	st, body = g.do("PUT", "/v1/messages/"+id, `{"status":"read"}`, auth)
	expect(t, "mark read", st, body, 200, 0)
	var answer map[string]json.RawMessage
	if json.Unmarshal([]byte(body), &answer) != nil || len(answer) != 1 || answer["meta"] == nil {
		t.Errorf("mark read answered %s, want only meta", body)
	}
	reads := simnetReads(t, cl)
	if len(reads) != 1 || reads[0].MessageID != id || reads[0].From != from || reads[0].Shard != 1 || reads[0].Node != conns[1].Node {
		t.Fatalf("the network saw reads %+v, want %s from %s over shard 1's connection of %s", reads, id, from, conns[1].Node)
	}
	st, body = g.do("PUT", "/v1/messages/no-such-message", `{"status":"read"}`, auth)
	expect(t, "mark an unknown id read", st, body, 404, apierror.NotFound)
	st, body = g.do("PUT", "/v1/messages/"+id, `{"status":"delivered"}`, auth)
	expect(t, "a status other than read", st, body, 400, apierror.ParameterInvalid)
	st, body = g.do("PUT", "/v1/messages/"+id, `{}`, auth)
	expect(t, "no status", st, body, 400, apierror.ParameterMissing)
	st, body = g.do("PUT", "/v1/messages/"+id, `status=read`, auth)
	expect(t, "not JSON", st, body, 400, apierror.RequestNotValid)
	if n := len(simnetReads(t, cl)); n != 1 {
		t.Errorf("refused requests reached the network: %d reads", n)
	}

	// After a failover of the sender's shard, both the earlier message and
	// a new one are marked through the new primary.
	victim := cl.CoreappByAddr(conns[1].Node)
	victim.Kill()
	killed := time.Now()
	next := cl.WaitConnected(1, victim.Addr, 20*time.Second)
	id2 := simnetInbound(t, cl, from)
	for _, m := range []string{id, id2} {
		var st int
		var body string
		for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if st, body = g.do("PUT", "/v1/messages/"+m, `{"status":"read"}`, auth); st == 200 || time.Now().After(end) {
				break
			}
		}
		expect(t, "mark read after the failover", st, body, 200, 0)
	}
	reads = simnetReads(t, cl)
	if len(reads) != 3 || reads[1].MessageID != id || reads[2].MessageID != id2 || reads[1].Node != next.Node || reads[2].Node != next.Node {
		t.Errorf("after the failover the network saw reads %+v, want %s and %s through %s", reads, id, id2, next.Node)
	}
	t.Logf("shard 1 failed over to %s %s after the kill; reads marked through it", next.Node, time.Since(killed).Round(time.Millisecond))

	// Identities come from the network; a change needs acknowledging.
	contact := "16315550199"
	identity := func() (hash string, created int64, acked bool) {
		t.Helper()
		st, body := g.do("GET", "/v1/contacts/"+contact+"/identity", "", auth)
		var doc struct {
			Contacts struct {
				Hash         string `json:"hash"`
				Created      int64  `json:"created_timestamp"`
				Acknowledged bool   `json:"acknowledged"`
			} `json:"contacts"`
		}
		if st != 200 || json.Unmarshal([]byte(body), &doc) != nil || doc.Contacts.Hash == "" || doc.Contacts.Created == 0 {
			t.Fatalf("GET identity: HTTP %d %s", st, body)
		}
		return doc.Contacts.Hash, doc.Contacts.Created, doc.Contacts.Acknowledged
	}
	first, _, acked := identity()
	if !acked {
		t.Errorf("a first identity is not acknowledged")
	}
	b, _ := json.Marshal(map[string]string{"wa_id": contact})
	resp, err := http.Post("http://"+cl.SimnetHTTP+"/v1/identities", "application/json", bytes.NewReader(b))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("change the identity at the network: %v %v", err, resp)
	}
	resp.Body.Close()
	changed, created, acked := identity()
	if changed == first || acked || time.Since(time.UnixMilli(created)) > time.Minute {
		t.Errorf("after a change: hash %s (was %s), acknowledged %v, created %v", changed, first, acked, time.UnixMilli(created))
	}
	// The webhook hears of the change as in the original: a system message.
	cl.Eventually(10*time.Second, "the user_identity_changed notification", func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range notices {
			if strings.Contains(n, `"identity":"`+changed+`"`) && strings.Contains(n, `"type":"system"`) && strings.Contains(n, `"from":"`+contact+`"`) {
				return nil
			}
		}
		return fmt.Errorf("none with hash %s among %q", changed, notices)
	})
	st, body = g.do("PUT", "/v1/contacts/"+contact+"/identity", `{"hash":"`+first+`"}`, auth)
	expect(t, "acknowledge an old hash", st, body, 400, apierror.ParameterInvalid)
	st, body = g.do("PUT", "/v1/contacts/"+contact+"/identity", `{"hash":"`+changed+`"}`, auth)
	expect(t, "acknowledge the latest hash", st, body, 200, 0)
	if _, _, acked := identity(); !acked {
		t.Errorf("the latest hash is not acknowledged after PUT")
	}
	var ids struct {
		Acks []struct{ WAID, Hash string } `json:"acks"`
	}
	if err := cl.SimnetJSON("/v1/identities", &ids); err != nil || len(ids.Acks) != 1 || ids.Acks[0].Hash != changed {
		t.Errorf("the network recorded acknowledgements %+v (%v), want one of %s", ids.Acks, err, changed)
	}
	// With show_security_notifications off the webhook is not told: a
	// later message from the contact arrives, the notice before it does not.
	st, body = g.do("PATCH", "/v1/settings/application", `{"show_security_notifications":false}`, auth)
	expect(t, "show_security_notifications off", st, body, 200, 0)
	time.Sleep(500 * time.Millisecond) // the coreapps read settings every 200 ms
	mu.Lock()
	before := len(notices)
	mu.Unlock()
	b, _ = json.Marshal(map[string]string{"wa_id": contact})
	if resp, err = http.Post("http://"+cl.SimnetHTTP+"/v1/identities", "application/json", bytes.NewReader(b)); err != nil || resp.StatusCode != 200 {
		t.Fatalf("change the identity at the network again: %v %v", err, resp)
	}
	resp.Body.Close()
	later := simnetInbound(t, cl, contact)
	cl.Eventually(10*time.Second, "the later message at the webhook", func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, a := range all {
			if strings.Contains(a, later) {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
	mu.Lock()
	if len(notices) != before {
		t.Errorf("with show_security_notifications off the webhook got %d more notices: %q", len(notices)-before, notices[before:])
	}
	mu.Unlock()
	st, body = g.do("GET", "/v1/contacts/1234/identity", "", auth)
	expect(t, "identity of a number that is no account", st, body, 404, apierror.NotFound)
	st, body = g.do("PUT", "/v1/contacts/"+contact+"/identity", `{}`, auth)
	expect(t, "acknowledge without a hash", st, body, 400, apierror.ParameterMissing)

	// Sticker packs: the network's first-party catalogue.
	var cat struct {
		Packs []struct {
			ID       string `json:"id"`
			Name     string `json:"name"`
			Stickers []struct {
				Index  string   `json:"index"`
				ID     string   `json:"id"`
				Emojis []string `json:"emojis"`
			} `json:"stickers"`
		} `json:"stickerpacks"`
	}
	if err := cl.SimnetJSON("/v1/stickerpacks", &cat); err != nil || len(cat.Packs) == 0 {
		t.Fatalf("the network's sticker packs: %v", err)
	}
	packIDs := func(body string) string {
		var doc struct {
			Packs []struct{ ID string } `json:"stickerpacks"`
		}
		if json.Unmarshal([]byte(body), &doc) != nil || doc.Packs == nil {
			return "not a list of packs: " + body
		}
		var ids []string
		for _, p := range doc.Packs {
			ids = append(ids, p.ID)
		}
		return strings.Join(ids, ",")
	}
	var want []string
	for _, p := range cat.Packs {
		want = append(want, p.ID)
	}
	st, body = g.do("GET", "/v1/stickerpacks?namespace=whatsapp", "", auth)
	if st != 200 || packIDs(body) != strings.Join(want, ",") {
		t.Errorf("first-party packs: HTTP %d %s, want %v", st, body, want)
	}
	pack := cat.Packs[0]
	st, body = g.do("GET", "/v1/stickerpacks/"+pack.ID+"?namespace=whatsapp", "", auth)
	if st != 200 || !strings.Contains(body, `"name":"`+pack.Name+`"`) {
		t.Errorf("pack %s: HTTP %d %s", pack.ID, st, body)
	}
	s1 := pack.Stickers[1]
	st, body = g.do("GET", "/v1/stickerpacks/"+pack.ID+"/stickers/"+s1.Index+"?namespace=whatsapp", "", auth)
	if st != 200 || !strings.Contains(body, `"id":"`+s1.ID+`"`) {
		t.Errorf("sticker %s/%s: HTTP %d %s", pack.ID, s1.Index, st, body)
	}
	st, body = g.do("GET", "/v1/stickerpacks", "", auth)
	if st != 200 || packIDs(body) != "" {
		t.Errorf("third-party packs: HTTP %d %s, want none", st, body)
	}
	st, body = g.do("GET", "/v1/stickerpacks?namespace=nobody", "", auth)
	expect(t, "an unknown namespace", st, body, 400, apierror.ParameterInvalid)
	st, body = g.do("GET", "/v1/stickerpacks/no-such-pack?namespace=whatsapp", "", auth)
	expect(t, "an unknown pack", st, body, 404, apierror.NotFound)

	// Metrics: JSON by default, Prometheus text when asked, on both paths.
	for _, p := range []string{"/metrics", "/v1/metrics"} {
		st, body = g.do("GET", p, "", auth)
		var doc struct {
			Metrics map[string]struct {
				Data []struct {
					Labels map[string]string `json:"labels"`
					Value  float64           `json:"value"`
				} `json:"data"`
				Type string `json:"type"`
			} `json:"metrics"`
		}
		if st != 200 || json.Unmarshal([]byte(body), &doc) != nil {
			t.Fatalf("GET %s: HTTP %d %.300s", p, st, body)
		}
		var markReads float64
		for _, d := range doc.Metrics["multiconnect_gateway_requests_total"].Data {
			if d.Labels["route"] == "mark_read" && d.Labels["target"] == "shard" {
				markReads = d.Value
			}
		}
		if markReads < 3 || doc.Metrics["multiconnect_gateway_requests_total"].Type != "counter" {
			t.Errorf("GET %s: mark_read requests %v, want at least 3 (counter)", p, markReads)
		}
		st, body = g.do("GET", p+"?format=prometheus", "", auth)
		if st != 200 || !strings.Contains(body, `multiconnect_gateway_requests_total{route="mark_read",target="shard"}`) {
			t.Errorf("GET %s?format=prometheus: HTTP %d %.300s", p, st, body)
		}
		// Prometheus's scraper says what it accepts: it gets the text
		// format without format=prometheus, so old scrape configs work.
		st, body = g.do("GET", p, "", map[string]string{"Authorization": "Bearer " + token,
			"Accept": "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"})
		if st != 200 || !strings.Contains(body, "# TYPE multiconnect_gateway_requests_total counter") {
			t.Errorf("GET %s as Prometheus asks: HTTP %d %.300s", p, st, body)
		}
		st, body = g.do("GET", p+"?format=xml", "", auth)
		expect(t, "an unknown metrics format", st, body, 400, apierror.ParameterInvalid)
	}

	// On-demand collection: with a 1 ms retention it removes the sent
	// message and the inbound ones, and notifies the webhook.
	to := recipientFor(t, 0, 2, 22)
	st, body = g.do("POST", "/v1/messages", messageBody(to), auth)
	expect(t, "send a message", st, body, 201, 0)
	cl.Eventually(10*time.Second, "the message is sent", func() error {
		var n int
		if err := cl.SQL.QueryRow(`SELECT COUNT(*) FROM messages WHERE state <> 0`).Scan(&n); err != nil || n == 0 {
			return fmt.Errorf("%d sent messages (%v)", n, err)
		}
		return nil
	})
	st, body = g.do("PUT", "/v1/services/message/gc", "", auth)
	if st != 200 || !strings.Contains(body, `"gc":{"status":"processing"}`) {
		t.Fatalf("PUT /v1/services/message/gc: HTTP %d %s", st, body)
	}
	cl.Eventually(10*time.Second, "the collection's notification", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(services) == 0 {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	var note struct {
		Services []struct {
			Message struct {
				GC struct {
					Deleted int    `json:"messages_deleted"`
					Node    string `json:"node"`
					Status  string `json:"status"`
				} `json:"gc"`
			} `json:"message"`
		} `json:"services"`
	}
	mu.Lock()
	err = json.Unmarshal([]byte(services[0]), &note)
	mu.Unlock()
	if err != nil || len(note.Services) != 1 || note.Services[0].Message.GC.Status != "complete" ||
		note.Services[0].Message.GC.Deleted < 3 || note.Services[0].Message.GC.Node == "" {
		t.Errorf("notification %+v (%v): want complete with at least 3 messages deleted (1 sent, 2 inbound)", note, err)
	}
	st, body = g.do("PUT", "/v1/messages/"+id, `{"status":"read"}`, auth)
	expect(t, "mark read a collected message", st, body, 404, apierror.NotFound)
	st, body = g.do("GET", "/v1/services/message/gc", "", auth)
	expect(t, "GET on the collection", st, body, 405, apierror.RequestNotValid)
	st, body = g.do("PUT", "/v1/services/media/gc", "", auth)
	expect(t, "a service not served", st, body, 404, apierror.NotFound)
	var left int
	if err := cl.SQL.QueryRow(`SELECT COUNT(*) FROM inbound_messages`).Scan(&left); err != nil || left != 0 {
		t.Errorf("%d inbound messages left after the collection (%v)", left, err)
	}
	cl.RequireNoViolations()
}
