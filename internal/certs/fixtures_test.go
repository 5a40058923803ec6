package certs

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/openapi"
)

// TestConformanceFixtures keeps the PEM bodies of the OpenAPI document's
// valid certificate cases valid: the conformance walker sends them as they
// are.
func TestConformanceFixtures(t *testing.T) {
	b, err := openapi.Document()
	if err != nil {
		t.Fatal(err)
	}
	// A path item may hold keys other than operations (parameters).
	var d struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	type post struct {
		Conf []struct {
			Name   string `json:"name"`
			Raw    string `json:"raw"`
			Status int    `json:"status"`
		} `json:"x-conformance"`
	}
	parse := map[string]func([]byte) error{
		"/v1/certificates/external":    func(b []byte) error { _, err := ParseExternal(b, time.Now()); return err },
		"/v1/certificates/webhooks/ca": func(b []byte) error { _, _, err := ParseCABundle(b); return err },
	}
	for path, f := range parse {
		n := 0
		var op post
		if err := json.Unmarshal(d.Paths[path]["post"], &op); err != nil {
			t.Fatal(err)
		}
		for _, c := range op.Conf {
			if c.Raw == "" {
				continue
			}
			err := f([]byte(c.Raw))
			switch {
			case c.Status == 200 && err != nil:
				t.Errorf("POST %s, %q: the fixture is refused: %v", path, c.Name, err)
			case c.Status == 400 && err == nil:
				t.Errorf("POST %s, %q: the fixture is taken, the case expects 400", path, c.Name)
			}
			n++
		}
		if n < 2 {
			t.Errorf("POST %s: %d cases with a PEM body, want a valid and an invalid one at least", path, n)
		}
	}
}
