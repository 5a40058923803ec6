package caddymodule

import (
	"math/rand/v2"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/shard"
)

// TestRoutesEveryShardToItsPrimary sends messages for recipients of every
// shard through the real Caddy and checks each one reached the primary of
// its shard, carrying the cluster secret and not the user's token, and that
// a forged secret header from the client never reaches a node.
func TestRoutesEveryShardToItsPrimary(t *testing.T) {
	const shards = 4
	c := newTestCluster(t, shards)
	primaries := c.addPrimaries(shards)
	secondary := c.addNode("coreapp")
	master := c.addNode("master")
	master.primary.Store(true)
	c.setPrimaryMaster(master)
	g := c.startGateway("")
	token := g.loginAdmin()

	rng := rand.New(rand.NewPCG(1, 2))
	perShard := make([]int, shards)
	for i := 0; i < 200; i++ {
		to := strconv.Itoa(1_000_000_000 + rng.IntN(1_000_000_000))
		if i%5 == 0 { // the punctuation people write numbers with hashes the same
			to = "+" + to[:3] + " (" + to[3:6] + ") " + to[6:]
		}
		h := bearer(token)
		h[cluster.SecretHeader] = "forged-by-the-client"
		st, body := g.do("POST", "/v1/messages", messageBody(to), h)
		if st != 201 {
			t.Fatalf("POST /v1/messages to %s: HTTP %d: %s", to, st, body)
		}
		s, _ := shard.For(to, shards)
		if want := primaries[s].addr; !strings.Contains(body, want) {
			t.Fatalf("recipient %s (shard %d) answered by %s, want its primary %s", to, s, body, want)
		}
		perShard[s]++
	}
	for s, n := range perShard {
		if n == 0 {
			t.Errorf("no recipient hashed to shard %d in 200", s)
		}
		for _, r := range primaries[s].requests() {
			if !r.secretsOK || r.auth != "" {
				t.Errorf("shard %d primary got secret ok=%v, Authorization %q: want the cluster secret only", s, r.secretsOK, r.auth)
			}
			if got, _ := shard.For(r.to, shards); got != s {
				t.Errorf("shard %d primary received recipient %s of shard %d", s, r.to, got)
			}
		}
	}
	if n := len(secondary.requests()); n != 0 {
		t.Errorf("the secondary coreapp received %d requests", n)
	}

	// Routes without a recipient.
	for _, tc := range []struct {
		method, path string
		want         *stubNode // nil: any primary coreapp
	}{
		{"GET", "/v1/settings/application", master},
		{"PATCH", "/v1/settings/application", master},
		{"POST", "/v1/account/shards", master},
		{"GET", "/v1/stats/db", master},
		{"GET", "/v1/stats/app", master},
		{"POST", "/v1/support", master},
		{"POST", "/v1/certificates/external", master},
		{"DELETE", "/v1/certificates/webhooks/ca", master},
		{"POST", "/v1/contacts", nil},
		{"GET", "/v1/media/abc", nil},
	} {
		st, body := g.do(tc.method, tc.path, `{"x":1}`, bearer(token))
		if st != 200 {
			t.Errorf("%s %s: HTTP %d: %s", tc.method, tc.path, st, body)
			continue
		}
		if tc.want != nil && !strings.Contains(body, tc.want.addr) {
			t.Errorf("%s %s answered by %s, want %s", tc.method, tc.path, body, tc.want.addr)
		}
		if tc.want == nil && !strings.Contains(body, "127.0.0.1:") || strings.Contains(body, secondary.addr) {
			t.Errorf("%s %s answered by %s, want a primary coreapp", tc.method, tc.path, body)
		}
	}

	// Marking an inbound message read goes to the primary of its sender's
	// shard, found in inbound_messages; an id not there reaches no node.
	sender := recipientFor(t, 2, shards, 5)
	if _, err := c.db.Exec(`INSERT INTO inbound_messages (id, sender, received_at) VALUES ('in-routing-1', ?, NOW(6))`, sender); err != nil {
		t.Fatal(err)
	}
	before := len(primaries[2].requests())
	if st, body := g.do("PUT", "/v1/messages/in-routing-1", `{"status":"read"}`, bearer(token)); st != 200 || !strings.Contains(body, primaries[2].addr) {
		t.Errorf("mark read of shard 2's sender: HTTP %d %s, want its primary %s", st, body, primaries[2].addr)
	}
	if len(primaries[2].requests()) != before+1 {
		t.Errorf("shard 2's primary got %d requests for the mark read, want 1", len(primaries[2].requests())-before)
	}
	if st, body := g.do("PUT", "/v1/messages/in-routing-2", `{"status":"read"}`, bearer(token)); st != 404 || errCode(body) != apierror.NotFound {
		t.Errorf("mark read of an unknown id: HTTP %d %s, want 404 with 1006", st, body)
	}

	// A wamid is base64: a '/' in it is escaped in the path (%2F) and is
	// part of the id, wherever it falls, also at its end. Such an id still
	// goes to its sender's shard, unchanged.
	for _, id := range []string{"in/routing/3", "in-routing-4/", "/in-routing-5", "in/../settings/6"} {
		if _, err := c.db.Exec(`INSERT INTO inbound_messages (id, sender, received_at) VALUES (?, ?, NOW(6))`, id, sender); err != nil {
			t.Fatal(err)
		}
		before := len(primaries[2].requests())
		st, body := g.do("PUT", "/v1/messages/"+url.PathEscape(id), `{"status":"read"}`, bearer(token))
		if st != 200 || !strings.Contains(body, primaries[2].addr) {
			t.Errorf("mark read of %q: HTTP %d %s, want shard 2's primary %s", id, st, body, primaries[2].addr)
			continue
		}
		reqs := primaries[2].requests()
		if len(reqs) != before+1 {
			t.Errorf("mark read of %q: shard 2's primary got %d requests, want 1", id, len(reqs)-before)
			continue
		}
		if got, want := reqs[len(reqs)-1].rawPath, "/v1/messages/"+url.PathEscape(id); got != want {
			t.Errorf("mark read of %q forwarded as %s, want %s", id, got, want)
		}
	}
	// Escaped dots are dot segments all the same: access is checked on
	// the path a node would resolve.
	if st, body := g.do("GET", "/v1/media/%2E%2E/settings/application", "", bearer(token)); st != 200 || !strings.Contains(body, master.addr) {
		t.Errorf("/v1/media/%%2E%%2E/settings/application: HTTP %d %s, want the master's settings route", st, body)
	}
	if st, body := g.do("GET", "/v1/m%65dia/abc", "", bearer(token)); st != 200 || strings.Contains(body, master.addr) {
		t.Errorf("/v1/m%%65dia/abc: HTTP %d %s, want a primary coreapp's media route", st, body)
	}

	// Dot segments are resolved before access checks and forwarding.
	if st, body := g.do("GET", "/v1/media/../settings/application", "", bearer(token)); st != 200 || !strings.Contains(body, master.addr) {
		t.Errorf("/v1/media/../settings/application: HTTP %d %s, want the master's settings route", st, body)
	}
	// The CA of the gateway's own certificate is the gateway's: on plain
	// HTTP it has none.
	if st, body := g.do("GET", "/v1/certificates/external/ca", "", bearer(token)); st != 404 || errCode(body) != apierror.NotFound || strings.Contains(body, master.addr) {
		t.Errorf("GET /v1/certificates/external/ca on plain HTTP: HTTP %d %s, want the gateway's 404 with 1006", st, body)
	}
	if st, body := g.do("GET", "/v1/nothing-here", "", bearer(token)); st != 404 || errCode(body) != apierror.NotFound {
		t.Errorf("unknown route: HTTP %d %s, want 404 with 1006", st, body)
	}

	// Caddy's access log records the shard and the user, and never the
	// cluster secret the gateway added for the node.
	logText, err := os.ReadFile(g.log)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(logText), c.secret) {
		t.Error("the cluster secret appears in Caddy's log")
	}
	if !strings.Contains(string(logText), `"shard":`) || !strings.Contains(string(logText), `"user":"admin"`) {
		t.Errorf("access log lacks the shard or user fields:\n%s", tailString(string(logText), 2000))
	}
}

// TestRefusesBadMessageRequests checks the request errors through the real
// Caddy: each answer carries the original's code, and nothing reaches a node.
func TestRefusesBadMessageRequests(t *testing.T) {
	c := newTestCluster(t, 2)
	var nodes []*stubNode
	for s := 0; s < 2; s++ {
		n := c.addNode("coreapp")
		n.shard.Store(int64(s))
		c.assign(s, n, 1)
		nodes = append(nodes, n)
	}
	g := c.startGateway("max_body_size 4KiB")
	token := g.loginAdmin()
	for _, tc := range []struct {
		name, body     string
		status, code   int
		detailsContain string
	}{
		{"malformed JSON", `{"to": "1555`, 400, apierror.RequestNotValid, "not valid JSON"},
		{"not an object", `["15551234567"]`, 400, apierror.RequestNotValid, "JSON object"},
		{"empty body", ``, 400, apierror.RequestNotValid, "empty"},
		{"missing to", `{"type":"text","text":{"body":"hi"}}`, 400, apierror.ParameterMissing, "to"},
		{"null to", `{"to":null}`, 400, apierror.ParameterMissing, "to"},
		{"numeric to", `{"to":15551234567}`, 400, apierror.ParameterInvalid, "string"},
		{"letters", `{"to":"call-me-maybe"}`, 400, apierror.ParameterInvalid, "phone number"},
		{"no digits", `{"to":"+() -"}`, 400, apierror.ParameterInvalid, "no digits"},
		{"duplicate to", `{"to":"15551234567","to":"15557654321"}`, 400, apierror.ParameterInvalid, "more than once"},
		{"case variant", `{"to":"15551234567","TO":"15557654321"}`, 400, apierror.ParameterInvalid, "did you mean"},
		{"too large", `{"to":"15551234567","text":{"body":"` + strings.Repeat("x", 5000) + `"}}`, 413, apierror.RequestNotValid, "4096 bytes"},
	} {
		st, body := g.do("POST", "/v1/messages", tc.body, bearer(token))
		if st != tc.status || errCode(body) != tc.code || !strings.Contains(body, tc.detailsContain) {
			t.Errorf("%s: HTTP %d %s; want %d with code %d mentioning %q", tc.name, st, body, tc.status, tc.code, tc.detailsContain)
		}
	}
	// A chunked body over the limit (no Content-Length to refuse early).
	big := strings.NewReader(`{"to":"15551234567","pad":"` + strings.Repeat("y", 10000) + `"}`)
	req, _ := newChunkedRequest(g.url+"/v1/messages", big)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := g.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Errorf("chunked oversize body: HTTP %d, want 413", resp.StatusCode)
	}
	for _, n := range nodes {
		if got := len(n.requests()) + int(n.refused.Load()); got != 0 {
			t.Errorf("node %s received %d refused requests", n.addr, got)
		}
	}
}
