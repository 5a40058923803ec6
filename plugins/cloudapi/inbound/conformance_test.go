package inbound

import (
	"strings"
	"testing"

	"github.com/multiconnect/multiconnect/internal/openapi"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/metaspec"
)

// The webhooks the OpenAPI document's conformance cases send to the
// gateway are ones Meta would send (Meta's description), so the walker
// does not test the route on bodies only we believe in.
func TestConformanceWebhooksAreMetas(t *testing.T) {
	cases, err := openapi.Cases(openapi.Operation{Method: "POST", Path: "/cloudapi/webhook"})
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, c := range cases {
		// The bodies that reach the translation: signed, and JSON.
		if c.Body == nil || c.HubSignature != "sign" {
			continue
		}
		body := strings.ReplaceAll(string(c.Body), `"$now"`, `"1750000000"`)
		if err := metaspec.ValidateWebhook([]byte(body)); err != nil {
			t.Errorf("case %q: %v", c.Name, err)
		}
		checked++
	}
	if checked < 2 {
		t.Errorf("checked %d webhook bodies; the document has fewer signed cases than expected", checked)
	}
}
