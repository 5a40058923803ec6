package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/clustertest"
	"github.com/multiconnect/multiconnect/internal/shard"
)

// messageID is the id of a 201 answer to POST /v1/messages, or "".
func messageID(body string) string {
	var doc struct {
		Messages []struct {
			ID string `json:"id"`
		} `json:"messages"`
	}
	if json.Unmarshal([]byte(body), &doc) != nil || len(doc.Messages) != 1 {
		return ""
	}
	return doc.Messages[0].ID
}

// TestIdempotencyKeysThroughGateway sends the two confirmed cases
// through the gateway to a real coreapp: the same key with a different body
// must be refused (422, nothing stored), the same key and body with the
// recipient written another way must return the first id and reach the
// network once; and keys belong to their user.
func TestIdempotencyKeysThroughGateway(t *testing.T) {
	cl, g := startWithRealNodes(t, clustertest.Options{Masters: 1, Coreapps: 2, Shards: 1}, "")
	admin := g.loginAdmin()
	st, body := g.do("POST", "/v1/users", `{"username":"bob","password":"Bob-passw0rd!","role":"USER"}`, jsonHeaders(bearer(admin)))
	if st != http.StatusCreated && st != http.StatusOK {
		t.Fatalf("create user bob: HTTP %d %s", st, body)
	}
	st, body = g.do("POST", "/v1/users/login", "", basic("bob", "Bob-passw0rd!"))
	if st != http.StatusOK {
		t.Fatalf("bob's login: HTTP %d %s", st, body)
	}
	bob := tokenOf(t, body)

	post := func(token, key, to, text string) (int, string) {
		h := jsonHeaders(bearer(token))
		h["X-Idempotency-Key"] = key
		return g.do("POST", "/v1/messages", fmt.Sprintf(`{"to":%q,"type":"text","text":{"body":%q}}`, to, text), h)
	}
	stored := func(digits string) int {
		var n int
		if err := cl.SQL.QueryRow(`SELECT COUNT(*) FROM messages WHERE REPLACE(REPLACE(REPLACE(REPLACE(recipient,'+',''),' ',''),'-',''),'.','') = ?`, digits).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// atNetwork waits until the network has at least want messages for
	// digits (5 s at most), then half a second more for any extra one.
	atNetwork := func(digits string, want int) []clustertest.NetworkMessage {
		t.Helper()
		count := func() (got []clustertest.NetworkMessage) {
			for _, m := range cl.NetworkMessages("") {
				if string(shard.Digits(m.To)) == digits {
					got = append(got, m)
				}
			}
			return got
		}
		for deadline := time.Now().Add(5 * time.Second); len(count()) < want && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond)
		return count()
	}

	// Case 1: the same key with a different body.
	const to1 = "16315550001"
	st, body = post(admin, "k1", to1, "first")
	id1 := messageID(body)
	if st != http.StatusCreated || id1 == "" {
		t.Fatalf("first message: HTTP %d %s", st, body)
	}
	st, body = post(admin, "k1", to1, "SECOND, different")
	t.Logf("same key, different body: HTTP %d %s", st, body)
	if st != http.StatusUnprocessableEntity || errCode(body) != apierror.ParameterInvalid {
		t.Errorf("same key, different body: HTTP %d %s; want 422 with code %d (the second message must not be dropped silently)", st, body, apierror.ParameterInvalid)
	}
	if n := stored(to1); n != 1 {
		t.Errorf("%d rows stored for %s, want 1 (the refused request stores nothing)", n, to1)
	}
	// The same key and body again is a retry: the first id.
	st, body = post(admin, "k1", to1, "first")
	if st != http.StatusCreated || messageID(body) != id1 {
		t.Errorf("retry of the first message: HTTP %d %s, want 201 with %s", st, body, id1)
	}

	// Case 2: the same key and body, the recipient written another way.
	const to2 = "16315551001"
	st, body = post(admin, "k2", "+1 631-555-1001", "hello")
	id2 := messageID(body)
	if st != http.StatusCreated || id2 == "" {
		t.Fatalf("message to +1 631-555-1001: HTTP %d %s", st, body)
	}
	st, body = post(admin, "k2", to2, "hello")
	t.Logf("same key and body to %s: HTTP %d %s (first id %s)", to2, st, body, id2)
	if st != http.StatusCreated || messageID(body) != id2 {
		t.Errorf("same key and body to %s: HTTP %d %s, want 201 with the first id %s", to2, st, body, id2)
	}

	// Keys are per user: bob's k1 to the same recipient is his own message.
	st, body = post(bob, "k1", to1, "bob's own")
	if st != http.StatusCreated || messageID(body) == "" || messageID(body) == id1 {
		t.Errorf("bob's k1 to %s: HTTP %d %s, want 201 with a new id (not admin's %s)", to1, st, body, id1)
	}

	// What reached the network.
	if got := atNetwork(to1, 2); len(got) != 2 {
		t.Errorf("network has %d messages for %s, want 2 (admin's first, bob's)", len(got), to1)
	}
	got := atNetwork(to2, 1)
	if len(got) != 1 {
		t.Errorf("network has %d messages for %s, want 1", len(got), to2)
	}
	for _, m := range got {
		t.Logf("network: %s to %q body %s", m.ID, m.To, m.Body)
	}
}
