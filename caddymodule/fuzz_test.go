package caddymodule

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/shard"
)

// The seed corpora are in testdata/fuzz/<FuzzName>/ and run with every
// plain `go test`; to search further:
//
//	go test -run '^$' -fuzz '^FuzzMessageRecipient$' -fuzztime 1m ./caddymodule/

// refusedCodes are the answers a malformed request may get: all 400s.
var refusedCodes = map[int]bool{apierror.RequestNotValid: true, apierror.ParameterMissing: true, apierror.ParameterInvalid: true}

// FuzzMessageRecipient feeds arbitrary bodies to the parser that finds the
// recipient of POST /v1/messages. It must never panic; it must refuse
// anything that is not a JSON object with a usable "to" with a 400 in the
// original's codes; and what it accepts must be exactly what Go's JSON
// decoder (which the coreapp uses) reads as "to", so the gateway and the
// coreapp can never disagree on a message's shard.
func FuzzMessageRecipient(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		to, rerr := messageRecipient(body)
		if rerr != nil {
			if !refusedCodes[rerr.code] || rerr.details == "" || (rerr.status != 0 && rerr.status != http.StatusBadRequest) {
				t.Fatalf("refused with status %d code %d %q: want a 400 with 1008, 1009 or 1025 and details", rerr.status, rerr.code, rerr.details)
			}
			if !json.Valid(body) && rerr.code != apierror.RequestNotValid {
				t.Fatalf("invalid JSON refused with code %d, want 1025", rerr.code)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("accepted invalid JSON %q", body)
		}
		var msg struct {
			To string `json:"to"`
		}
		if err := json.Unmarshal(body, &msg); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", body, err)
		}
		if msg.To != to {
			t.Fatalf("gateway read to=%q, encoding/json reads %q from %q", to, msg.To, body)
		}
		if err := checkRecipient(to); err != nil {
			t.Fatalf("accepted recipient %q: %v", to, err)
		}
		for _, n := range []int{1, 2, 32} {
			s, err := shard.For(to, n)
			if err != nil || s < 0 || s >= n {
				t.Fatalf("accepted recipient %q hashes to shard %d of %d (%v)", to, s, n, err)
			}
		}
	})
}

// FuzzReadBody checks the body limit on bodies up to several times the
// limit, declared or chunked: within it the body comes back whole, beyond
// it the answer is a 413 naming the limit, never a truncated body.
func FuzzReadBody(f *testing.F) {
	f.Fuzz(func(t *testing.T, chunk []byte, repeat uint16, limit uint16, chunked bool) {
		if limit == 0 {
			limit = 1
		}
		body := bytes.Repeat(chunk, int(repeat%2048))
		r := httptest.NewRequest("POST", "/v1/messages", bytes.NewReader(body))
		if chunked {
			r.ContentLength = -1
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		got, rerr := readBody(r, int64(limit))
		if len(body) > int(limit) {
			if rerr == nil || rerr.status != http.StatusRequestEntityTooLarge || !strings.Contains(rerr.details, "limit") {
				t.Fatalf("%d-byte body over a %d-byte limit: %+v, want 413", len(body), limit, rerr)
			}
			return
		}
		if rerr != nil {
			t.Fatalf("%d-byte body within a %d-byte limit refused: %+v", len(body), limit, rerr)
		}
		if !bytes.Equal(got, body) {
			t.Fatalf("read %d bytes, want the %d sent", len(got), len(body))
		}
	})
}

// FuzzRoutePath checks path cleaning and routing on arbitrary paths: the
// cleaned path is absolute, has no dot segments or empty segments and is
// stable, and no spelling of a path reaches a route with weaker access
// than its cleaned form gets.
func FuzzRoutePath(f *testing.F) {
	f.Fuzz(func(t *testing.T, method, p string) {
		c := cleanPath(p)
		if !strings.HasPrefix(c, "/") || (len(c) > 1 && strings.HasSuffix(c, "/")) || strings.Contains(c, "//") {
			t.Fatalf("cleanPath(%q) = %q", p, c)
		}
		for _, seg := range strings.Split(c, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("cleanPath(%q) = %q keeps a dot segment", p, c)
			}
		}
		if cleanPath(c) != c {
			t.Fatalf("cleanPath is not stable on %q: %q then %q", p, c, cleanPath(c))
		}
		// The same on the escaped path a request would carry: the path
		// routed on is clean too, and the node is sent the same path.
		if u, err := url.ParseRequestURI("/" + p); err == nil && u.RawQuery == "" && !u.ForceQuery {
			raw := u.EscapedPath()
			rp := cleanURLPath(u)
			if strings.Contains(rp, "//") || (len(rp) > 1 && strings.HasSuffix(rp, "/")) || !strings.HasPrefix(rp, "/") {
				t.Fatalf("cleanURLPath(%q) routes on %q", raw, rp)
			}
			if u.RawPath != "" {
				if dec, err := url.PathUnescape(rp); rp != u.RawPath || err != nil || dec != u.Path {
					t.Fatalf("cleanURLPath(%q) routes on %q but forwards %q (%q)", raw, rp, u.RawPath, u.Path)
				}
			} else if rp != u.Path {
				t.Fatalf("cleanURLPath(%q) routes on %q but forwards %q", raw, rp, u.Path)
			}
		}
		rt := classify(method, c)
		if (rt.target == toNowhere) != (rt.name == "unknown") {
			t.Fatalf("classify(%q, %q) = %+v", method, c, rt)
		}
		if rt.target != toNowhere && rt.target != toGateway && rt.access == anyone {
			t.Fatalf("classify(%q, %q) proxies without authentication: %+v", method, c, rt)
		}
		if strings.HasPrefix(c, "/v1/settings") || strings.HasPrefix(c, "/v1/account") || strings.HasPrefix(c, "/v1/support") {
			if rt.target != toNowhere && rt.access != admin {
				t.Fatalf("classify(%q, %q): master command without ADMIN: %+v", method, c, rt)
			}
		}
	})
}

// TestReadBodyFraming covers what the fuzzer cannot produce through
// httptest: a Content-Length that does not match the body.
func TestReadBodyFraming(t *testing.T) {
	for _, tc := range []struct {
		body     string
		declared int64
		status   int
	}{
		{`{"to":"1"}`, 10, 0},
		{`{"to":"1"}`, 20, http.StatusBadRequest},                 // shorter than declared
		{`{"to":"1"}`, 5, http.StatusRequestEntityTooLarge},       // longer than declared
		{``, 3, http.StatusBadRequest},                            // declared, nothing sent
		{`{"to":"1"}`, 1 << 30, http.StatusRequestEntityTooLarge}, // refused before reading
	} {
		r := httptest.NewRequest("POST", "/v1/messages", strings.NewReader(tc.body))
		r.ContentLength = tc.declared
		got, rerr := readBody(r, 1<<20)
		switch {
		case tc.status == 0 && (rerr != nil || string(got) != tc.body):
			t.Errorf("%q declared %d: %q, %+v", tc.body, tc.declared, got, rerr)
		case tc.status != 0 && (rerr == nil || rerr.status != tc.status || rerr.code != apierror.RequestNotValid):
			t.Errorf("%q declared %d: %+v, want HTTP %d with 1025", tc.body, tc.declared, rerr, tc.status)
		}
	}
}
