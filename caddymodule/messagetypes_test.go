package caddymodule

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/clustertest"
	"github.com/multiconnect/multiconnect/internal/openapi"
)

// conformanceCase is one x-conformance example of the OpenAPI document.
type conformanceCase struct {
	Name    string            `json:"name"`
	Role    string            `json:"role"`
	Body    any               `json:"body"`
	Raw     *string           `json:"raw"`
	Status  int               `json:"status"`
	Code    int               `json:"code"`
	Setup   []conformanceStep `json:"setup"`
	Params  map[string]string `json:"params"`
	Headers map[string]string `json:"headers"`
}

type conformanceStep struct {
	Method      string            `json:"method"`
	Path        string            `json:"path"`
	RawBase64   string            `json:"raw_base64"`
	ContentType string            `json:"content_type"`
	Capture     map[string]string `json:"capture"`
}

// conformanceCases reads the x-conformance examples of one operation from
// the document the gateway serves.
func conformanceCases(t *testing.T, path, method string) []conformanceCase {
	t.Helper()
	b, err := openapi.Document()
	if err != nil {
		t.Fatal(err)
	}
	// A path item holds its operations and may hold other keys
	// (parameters): decode only the operation asked for.
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var op struct {
		Cases []conformanceCase `json:"x-conformance"`
	}
	if err := json.Unmarshal(doc.Paths[path][method], &op); err != nil {
		t.Fatal(err)
	}
	cases := op.Cases
	if len(cases) == 0 {
		t.Fatalf("%s %s has no x-conformance cases", method, path)
	}
	return cases
}

// substitute replaces "$name" strings anywhere in v by captured values.
func substitute(v any, captured map[string]string) any {
	switch x := v.(type) {
	case string:
		if c, ok := captured[strings.TrimPrefix(x, "$")]; ok && strings.HasPrefix(x, "$") {
			return c
		}
	case map[string]any:
		for k, e := range x {
			x[k] = substitute(e, captured)
		}
	case []any:
		for i, e := range x {
			x[i] = substitute(e, captured)
		}
	}
	return v
}

// statusHook is a webhook recording every status object it receives, whole.
type statusHook struct {
	url      string
	mu       sync.Mutex
	statuses []map[string]any
}

func startStatusHook(t *testing.T) *statusHook {
	h := &statusHook{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.url = "http://" + ln.Addr().String() + "/hook"
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var p struct {
			Statuses []map[string]any `json:"statuses"`
		}
		if err := json.Unmarshal(b, &p); err != nil {
			t.Errorf("webhook payload is not JSON: %s", b)
		}
		h.mu.Lock()
		h.statuses = append(h.statuses, p.Statuses...)
		h.mu.Unlock()
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return h
}

// find returns every status of message id with status st that arrived
// (the network's own sent, say, besides one a test injected).
func (h *statusHook) find(id, st string) []map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]any
	for _, s := range h.statuses {
		if s["id"] == id && s["status"] == st {
			out = append(out, s)
		}
	}
	return out
}

// TestMessageTypesThroughGateway sends every x-conformance example of
// POST /v1/messages through the gateway to a real cluster: each valid one
// (every type the original sent) is answered 201 and reaches the simulated
// network as sent, with its type made explicit; each invalid one gets its
// status and the original's code, and neither the database nor the
// network gains a message. Then the network reports statuses with
// conversation, pricing, the original's error codes, deleted and warning,
// and the webhook receives each in the original's shape.
func TestMessageTypesThroughGateway(t *testing.T) {
	cl, g := startWithRealNodes(t, clustertest.Options{Masters: 1, Coreapps: 2, Shards: 1}, "")
	token := g.loginAdmin()
	admin := jsonHeaders(bearer(token))
	hook := startStatusHook(t)
	st, body := g.do("PATCH", "/v1/settings/application",
		fmt.Sprintf(`{"webhooks":{"url":%q,"message":{"sent":true,"delivered":true,"read":true}}}`, hook.url), admin)
	expect(t, "set the webhook", st, body, 200, 0)
	const userPW = "Us3r-Passw0rd!"
	st, body = g.do("POST", "/v1/users", `{"username":"sender","password":"`+userPW+`","role":"USER"}`, admin)
	expect(t, "create a USER", st, body, 201, 0)
	st, body = g.do("POST", "/v1/users/login", "", basic("sender", userPW))
	expect(t, "USER login", st, body, 200, 0)
	user := jsonHeaders(bearer(tokenOf(t, body)))
	cl.WaitAllShardsConnected(15 * time.Second)
	// Settings reach the coreapps within 200 ms; the statuses below are
	// stored only once the webhook is known.
	time.Sleep(500 * time.Millisecond)

	countStored := func() (db int) {
		if err := cl.SQL.QueryRow(`SELECT COUNT(*) FROM messages`).Scan(&db); err != nil {
			t.Fatal(err)
		}
		return db
	}
	type sent struct {
		name, id, to string
		body         map[string]any
	}
	var accepted []sent
	types, refusedTypes := map[string]bool{}, map[string]bool{}
	for _, c := range conformanceCases(t, "/v1/messages", "post") {
		if b, _ := json.Marshal(c.Body); c.Status < 400 && strings.Contains(string(b), `"provider"`) {
			// The coreapp sends the network the fetched file, not the body
			// as sent: TestMediaProvidersThroughGateway checks that, and the
			// conformance walker runs the case against its media server.
			continue
		}
		captured := map[string]string{}
		for _, s := range c.Setup {
			raw, err := base64.StdEncoding.DecodeString(s.RawBase64)
			if err != nil {
				t.Fatalf("%s: setup body: %v", c.Name, err)
			}
			st, body := g.do(s.Method, s.Path, string(raw), map[string]string{"Authorization": "Bearer " + token, "Content-Type": s.ContentType})
			if st/100 != 2 {
				t.Fatalf("%s: setup %s %s: HTTP %d %s", c.Name, s.Method, s.Path, st, body)
			}
			var doc any
			_ = json.Unmarshal([]byte(body), &doc)
			for name, ptr := range s.Capture {
				v := doc
				for _, part := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
					switch x := v.(type) {
					case map[string]any:
						v = x[part]
					case []any:
						var i int
						fmt.Sscan(part, &i)
						v = x[i]
					}
				}
				captured[name], _ = v.(string)
			}
		}
		var reqBody string
		var sentDoc map[string]any
		if c.Raw != nil {
			reqBody = *c.Raw
		} else {
			c.Body = substitute(c.Body, captured)
			b, _ := json.Marshal(c.Body)
			reqBody = string(b)
			sentDoc, _ = c.Body.(map[string]any)
		}
		headers := admin
		if c.Role == "user" {
			headers = user
		}
		dbBefore := countStored()
		st, body := g.do("POST", "/v1/messages", reqBody, headers)
		if st != c.Status {
			t.Errorf("%s: HTTP %d %s, want %d", c.Name, st, body, c.Status)
			continue
		}
		if st >= 400 {
			if doc, ok := c.Body.(map[string]any); ok {
				typ, _ := doc["type"].(string)
				if typ == "" {
					typ = "text"
				}
				refusedTypes[typ] = true
			}
			if code := errCode(body); code != c.Code {
				t.Errorf("%s: code %d (%s), want %d", c.Name, code, body, c.Code)
			}
			// The network is checked below: it must hold exactly the
			// accepted messages.
			if db := countStored(); db != dbBefore {
				t.Errorf("%s: refused, yet the database's messages went from %d to %d", c.Name, dbBefore, db)
			}
			continue
		}
		var out struct {
			Messages []struct{ ID string } `json:"messages"`
		}
		if json.Unmarshal([]byte(body), &out) != nil || len(out.Messages) != 1 || out.Messages[0].ID == "" {
			t.Errorf("%s: 201 without an id: %s", c.Name, body)
			continue
		}
		if _, ok := sentDoc["type"]; !ok {
			sentDoc["type"] = "text"
		}
		types[sentDoc["type"].(string)] = true
		accepted = append(accepted, sent{c.Name, out.Messages[0].ID, sentDoc["to"].(string), sentDoc})
	}
	for _, typ := range []string{"text", "template", "hsm", "image", "audio", "video", "document", "sticker", "location", "contacts", "interactive", "reaction"} {
		if !types[typ] {
			t.Errorf("no valid %s message among the cases", typ)
		}
		if !refusedTypes[typ] {
			t.Errorf("no invalid %s message among the cases", typ)
		}
	}

	// Every accepted message at the network, as sent (the gateway and the
	// coreapp change nothing but the implied type), and nothing else.
	cl.Eventually(20*time.Second, "every accepted message at the network", func() error {
		got := map[string]clustertest.NetworkMessage{}
		for _, m := range cl.NetworkMessages("") {
			got[m.ID] = m
		}
		if len(got) > len(accepted) {
			t.Fatalf("the network holds %d messages, %d were accepted", len(got), len(accepted))
		}
		for _, a := range accepted {
			m, ok := got[a.id]
			if !ok {
				return fmt.Errorf("%s (%s) not at the network", a.name, a.id)
			}
			var body map[string]any
			if err := json.Unmarshal(m.Body, &body); err != nil || !reflect.DeepEqual(jsonRound(t, body), jsonRound(t, a.body)) || m.Type != a.body["type"] {
				t.Fatalf("%s: the network received type %q %s, sent %v", a.name, m.Type, m.Body, a.body)
			}
		}
		return nil
	})

	// Statuses the network reports with more than the status itself.
	byName := map[string]sent{}
	for _, a := range accepted {
		byName[a.name] = a
	}
	pick := func(name string) sent {
		a, ok := byName[name]
		if !ok {
			t.Fatalf("no accepted case %q", name)
		}
		return a
	}
	conv := map[string]any{"id": "4d5f6b7e9c1a", "origin": map[string]any{"type": "business_initiated"}, "expiration_timestamp": 1700086400}
	pricing := map[string]any{"billable": true, "pricing_model": "CBP", "category": "business_initiated"}
	injected := []struct {
		msg    sent
		status string
		extra  map[string]any
	}{
		{pick("a legacy hsm template"), "sent", map[string]any{"conversation": conv, "pricing": pricing}},
		{pick("an interactive list"), "failed", map[string]any{"errors": []any{map[string]any{"code": 470, "title": "Message failed to send because more than 24 hours have passed since the customer last replied to this number"}}}},
		{pick("a sticker"), "failed", map[string]any{"errors": []any{map[string]any{"code": 1026, "title": "Receiver Incapable"}}}},
		{pick("a location"), "failed", map[string]any{"errors": []any{map[string]any{"code": 480, "title": "User potentially changed"}}}},
		{pick("a reaction"), "deleted", nil},
		{pick("an interactive product list"), "warning", map[string]any{"errors": []any{map[string]any{"code": 2029, "title": "Some products were excluded"}}}},
	}
	for _, in := range injected {
		req := map[string]any{"id": in.msg.id, "status": in.status}
		for k, v := range in.extra {
			req[k] = v
		}
		if err := cl.SimnetPost("/v1/statuses", req); err != nil {
			t.Fatal(err)
		}
	}
	// A number that is no account: the network fails the message with the
	// original's 1013.
	if err := cl.SimnetPost("/v1/unreachable", map[string]string{"number": "15550104999"}); err != nil {
		t.Fatal(err)
	}
	st, body = g.do("POST", "/v1/messages", `{"to":"15550104999","text":{"body":"anyone there?"}}`, admin)
	expect(t, "a message to a number that is no account", st, body, 201, 0)
	var out struct {
		Messages []struct{ ID string } `json:"messages"`
	}
	_ = json.Unmarshal([]byte(body), &out)
	injected = append(injected, struct {
		msg    sent
		status string
		extra  map[string]any
	}{sent{name: "to an unknown number", id: out.Messages[0].ID, to: "15550104999"}, "failed",
		map[string]any{"errors": []any{map[string]any{"code": 1013, "title": "User is not valid"}}}})

	cl.Eventually(20*time.Second, "every reported status at the webhook in the original's shape", func() error {
		for _, in := range injected {
			all := hook.find(in.msg.id, in.status)
			match := false
			for _, got := range all {
				want := map[string]any{"id": in.msg.id, "status": in.status, "recipient_id": in.msg.to, "timestamp": got["timestamp"]}
				for k, v := range in.extra {
					want[k] = v
				}
				if ts, _ := got["timestamp"].(string); ts == "" {
					t.Fatalf("%s: status without a string timestamp: %v", in.msg.name, got)
				}
				match = match || reflect.DeepEqual(jsonRound(t, got), jsonRound(t, want))
			}
			if !match {
				return fmt.Errorf("%s: no %s status with %v among %v", in.msg.name, in.status, in.extra, all)
			}
		}
		return nil
	})
	cl.RequireNoViolations()
}

// jsonRound encodes and decodes v, so values compare as JSON.
func jsonRound(t *testing.T, v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}
