package events

import (
	"encoding/json"
	"testing"

	"github.com/multiconnect/multiconnect/internal/settings"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// A status event's details (conversation, pricing, errors) reach the
// callback in the original's shape; a failed status without errors gets
// the generic 1000; details that do not parse leave the status as it is.
func TestStatusCallbackCarriesDetails(t *testing.T) {
	cases := []struct {
		status, payload, want string
	}{
		{"sent", `{"conversation":{"id":"c1","origin":{"type":"user_initiated"},"expiration_timestamp":1700086400},"pricing":{"billable":false,"pricing_model":"CBP","category":"user_initiated"},"ignored":1}`,
			`{"id":"m","status":"sent","timestamp":"1700000000","recipient_id":"15550100001","conversation":{"id":"c1","origin":{"type":"user_initiated"},"expiration_timestamp":1700086400},"pricing":{"billable":false,"pricing_model":"CBP","category":"user_initiated"}}`},
		{"failed", `{"errors":[{"code":471,"title":"Spam rate limit hit"}]}`,
			`{"id":"m","status":"failed","timestamp":"1700000000","recipient_id":"15550100001","errors":[{"code":471,"title":"Spam rate limit hit"}]}`},
		{"failed", ``,
			`{"id":"m","status":"failed","timestamp":"1700000000","recipient_id":"15550100001","errors":[{"code":1000,"title":"Message failed to send: the network could not deliver it"}]}`},
		{"deleted", ``, `{"id":"m","status":"deleted","timestamp":"1700000000","recipient_id":"15550100001"}`},
		{"warning", `{"errors":[{"code":1026,"title":"Receiver Incapable"}]}`,
			`{"id":"m","status":"warning","timestamp":"1700000000","recipient_id":"15550100001","errors":[{"code":1026,"title":"Receiver Incapable"}]}`},
		{"read", `{"errors":"not a list"}`, `{"id":"m","status":"read","timestamp":"1700000000","recipient_id":"15550100001"}`},
	}
	for _, c := range cases {
		cb, err := fromEvent(transport.Event{Kind: transport.EventStatus, MessageID: "m", Status: c.status, Recipient: "+1 555 010 0001",
			Timestamp: 1700000000, Payload: []byte(c.payload), Seq: 1})
		if err != nil {
			t.Fatalf("%s %s: %v", c.status, c.payload, err)
		}
		if mustCanon(t, string(cb.payload)) != mustCanon(t, c.want) || cb.kind != kindStatus {
			t.Errorf("%s %s:\n got %s\nwant %s", c.status, c.payload, cb.payload, c.want)
		}
	}
}

func mustCanon(t *testing.T, s string) string {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// A status the webhook does not want (or any status, with no webhook) is
// recognised before its payload is built; failed statuses and inbound
// messages always go on.
func TestUnwantedStatus(t *testing.T) {
	var s settings.Application
	s.Webhooks.URL = "http://hook"
	s.Webhooks.Message.Read = true
	for _, c := range []struct {
		url    string
		kind   transport.EventKind
		status string
		skip   bool
	}{
		{"http://hook", transport.EventStatus, "sent", true},
		{"http://hook", transport.EventStatus, "delivered", true},
		{"http://hook", transport.EventStatus, "read", false},
		{"http://hook", transport.EventStatus, "failed", false},
		{"", transport.EventStatus, "failed", true},
		{"", transport.EventInbound, "", false},
		{"http://hook", transport.EventInbound, "", false},
	} {
		s.Webhooks.URL = c.url
		cb := unwanted(transport.Event{Kind: c.kind, Status: c.status, Shard: 1, Seq: 7, Stream: "x", Conn: 3}, s)
		if (cb != nil) != c.skip {
			t.Errorf("url %q %s %s: skipped %v, want %v", c.url, c.kind, c.status, cb != nil, c.skip)
			continue
		}
		if cb != nil && (cb.kind != kindUnwanted || cb.netSeq != 7 || cb.shard != 1 || cb.stream != "x" || cb.conn != 3) {
			t.Errorf("placeholder %+v does not keep the event's place", cb)
		}
	}
}
