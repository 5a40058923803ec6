package metaspec

import (
	"bytes"
	"encoding/json"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"
)

func spec(t *testing.T) *Spec {
	t.Helper()
	s, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// examples returns the description's own examples for a request body.
func examples(t *testing.T, s *Spec, path, method string) map[string][]byte {
	t.Helper()
	p, _ := s.doc["paths"].(map[string]any)
	op, _ := p[path].(map[string]any)[method].(map[string]any)
	rb, _ := op["requestBody"].(map[string]any)
	ct, _ := rb["content"].(map[string]any)["application/json"].(map[string]any)
	ex, _ := ct["examples"].(map[string]any)
	out := map[string][]byte{}
	for name, e := range ex {
		v := e.(map[string]any)["value"]
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	if len(out) == 0 {
		t.Fatalf("no examples for %s %s", method, path)
	}
	return out
}

func post(path, ct string, body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	r.Header.Set("Authorization", "Bearer EAAtoken")
	if ct != "" {
		r.Header.Set("Content-Type", ct)
	}
	return r
}

const messages = "/v23.0/106540352242922/messages"

// Examples of the messages operation that contradict the description's own
// schema in ways metaspec does not correct. Each must still be refused (so
// a corrected description shows up here); every other example must pass.
var examplesAgainstTheSchema = map[string]string{
	"Send Test Message":                     "no recipient_type (required here: the transport always sends it)",
	"Send Contact Message":                  "no recipient_type",
	"Send Reply to Contact Message":         "no recipient_type",
	"Send Sample Issue Resolution Template": "no recipient_type",
	"Send Flow Template Message":            "no recipient_type; button sub_type flow is not in the schema's enum",
	"Send Text Message with Preview URL":    "no type and no recipient_type",
	"Send Reply to List Message":            "no type",
	"Send Order Status Message":             "interactive order_status is not in the schema",
	"Send Order Details Message":            "interactive order_details is not in the schema",
	"Send Multi-Product Message":            "header type is the placeholder <HEADER_TYPE>",
	"Send Catalog Template Message":         "button sub_type CATALOG in capitals",
}

// Meta's own example of every message type (and the read receipt) passes.
func TestDescriptionExamplesOfMessagesPass(t *testing.T) {
	s := spec(t)
	types := map[string]bool{}
	for name, body := range examples(t, s, "/{Version}/{Phone-Number-ID}/messages", "post") {
		err := ValidateRequest(post(messages, "application/json", body), body)
		if why, bad := examplesAgainstTheSchema[name]; bad {
			if err == nil {
				t.Errorf("example %q passes now (was refused: %s): remove it from the list", name, why)
			}
			if !strings.HasPrefix(why, "no recipient_type") || strings.Contains(why, ";") {
				continue
			}
			// Refused only for recipient_type: with it, the example passes.
			var m map[string]any
			_ = json.Unmarshal(body, &m)
			m["recipient_type"] = "individual"
			body, _ = json.Marshal(m)
			err = ValidateRequest(post(messages, "application/json", body), body)
		}
		if err != nil {
			t.Errorf("example %q: %v\n%s", name, err, body)
		}
		var m struct{ Type, Status string }
		_ = json.Unmarshal(body, &m)
		types[m.Type+m.Status] = true
	}
	var got []string
	for k := range types {
		got = append(got, k)
	}
	sort.Strings(got)
	for _, want := range []string{"text", "image", "audio", "video", "document", "sticker", "location", "contacts", "interactive", "template", "reaction", "read"} {
		if !types[want] {
			t.Errorf("no example of %q among %v", want, got)
		}
	}
}

// Every webhook example of messages and statuses passes (after the webhook
// part's references are repointed). Group webhooks are not part of the
// transport (On-Premises has no groups), and the description's group
// examples contradict its schema (timestamp, participant ids as numbers);
// they must still be refused.
func TestDescriptionExamplesOfWebhooksPass(t *testing.T) {
	s := spec(t)
	n := 0
	for name, body := range examples(t, s, WebhookPath, "post") {
		err := ValidateWebhook(body)
		if strings.Contains(string(body), `"field":"group_`) {
			if err == nil {
				t.Errorf("group example %q passes now: take it into the test", name)
			}
			continue
		}
		n++
		if err != nil {
			t.Errorf("example %q: %v\n%s", name, err, body)
		}
	}
	if n < 10 {
		t.Fatalf("only %d message webhook examples", n)
	}
}

func TestMessagesFixesAndRefusals(t *testing.T) {
	cases := []struct {
		name, body string
		want       string // "" = passes; else a fragment of the error
	}{
		{"text", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"16505551234","type":"text","text":{"body":"hi"}}`, ""},
		{"text with opaque data", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"16505551234","type":"text","text":{"body":"hi"},"biz_opaque_callback_data":"msg-1"}`, ""},
		{"opaque data too long", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text","text":{"body":"hi"},"biz_opaque_callback_data":"` + strings.Repeat("x", 513) + `"}`, "biz_opaque_callback_data"},
		{"reply context", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text","context":{"message_id":"wamid.x"},"text":{"body":"hi"}}`, ""},
		{"image by link", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"image","image":{"link":"https://x/y.jpg","caption":"c"}}`, ""},
		{"document by id", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"document","document":{"id":"123","filename":"a.pdf"}}`, ""},
		{"location", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"location","location":{"latitude":"1.5","longitude":"2.5","name":"n","address":"a"}}`, ""},
		{"reaction", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"reaction","reaction":{"message_id":"wamid.x","emoji":"👍"}}`, ""},
		{"unknown property", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text","text":{"body":"hi"},"colour":"red"}`, "colour"},
		{"text without text", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text"}`, "text"},
		{"text body wrong type", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text","text":{"body":5}}`, "/text/body"},
		{"mismatched type and object", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"image","text":{"body":"hi"}}`, "image"},
		{"unknown type", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"hologram","hologram":{}}`, "/type"},
		{"no recipient_type", `{"messaging_product":"whatsapp","to":"1","type":"text","text":{"body":"hi"}}`, "recipient_type"},
		{"no to", `{"messaging_product":"whatsapp","recipient_type":"individual","type":"text","text":{"body":"hi"}}`, "to"},
		{"location with numbers", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"location","location":{"latitude":37.4,"longitude":-122.1}}`, ""},
		{"template without policy", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"template","template":{"name":"t","language":{"code":"en"}}}`, ""},
		{"template button index 0", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"template","template":{"name":"t","language":{"policy":"deterministic","code":"en"},"components":[{"type":"button","sub_type":"quick_reply","index":"0","parameters":[{"type":"payload","payload":"p"}]}]}}`, ""},
		{"template button index 12", `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"template","template":{"name":"t","language":{"code":"en"},"components":[{"type":"button","sub_type":"quick_reply","index":12,"parameters":[{"type":"payload","payload":"p"}]}]}}`, "index"},
		{"read receipt", `{"messaging_product":"whatsapp","status":"read","message_id":"wamid.x"}`, ""},
		{"read receipt without id", `{"messaging_product":"whatsapp","status":"read"}`, "message_id"},
		{"read receipt bad status", `{"messaging_product":"whatsapp","status":"seen","message_id":"wamid.x"}`, "status"},
		{"not JSON", `{"messaging_product":`, "not JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := ValidateRequest(post(messages, "application/json", []byte(c.body)), []byte(c.body))
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && err == nil:
				t.Fatalf("accepted, want an error about %q", c.want)
			case c.want != "" && !strings.Contains(err.Error(), c.want):
				t.Fatalf("error %q does not name %q", err, c.want)
			}
			if err != nil {
				t.Logf("%v", err)
			}
		})
	}
}

func TestRequestsOutsideTheBody(t *testing.T) {
	body := []byte(`{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text","text":{"body":"hi"}}`)
	r := post(messages, "application/json", body)
	r.Header.Del("Authorization")
	if err := ValidateRequest(r, body); err == nil || !strings.Contains(err.Error(), "Authorization") {
		t.Fatalf("no Authorization: %v", err)
	}
	r = post(messages, "text/plain", body)
	if err := ValidateRequest(r, body); err == nil || !strings.Contains(err.Error(), "Content-Type") {
		t.Fatalf("text/plain: %v", err)
	}
	r = post("/v23.0/1/no_such_edge", "application/json", body)
	if err := ValidateRequest(r, body); err == nil || !strings.Contains(err.Error(), "no operation") {
		t.Fatalf("unknown path: %v", err)
	}
	r = httptest.NewRequest(http.MethodGet, "/v23.0/4490709327384033", nil)
	r.Header.Set("Authorization", "Bearer x")
	if err := ValidateRequest(r, nil); err != nil {
		t.Fatalf("GET media: %v", err)
	}
}

func TestMediaUpload(t *testing.T) {
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	_ = w.WriteField("messaging_product", "whatsapp")
	_ = w.WriteField("type", "image/jpeg")
	fw, _ := w.CreateFormFile("file", "a.jpg")
	_, _ = fw.Write([]byte{0xff, 0xd8, 0xff})
	_ = w.Close()
	r := post("/v23.0/106540352242922/media", w.FormDataContentType(), buf.Bytes())
	if err := ValidateRequest(r, buf.Bytes()); err != nil {
		t.Fatalf("upload: %v", err)
	}
}

func TestWebhookRefusals(t *testing.T) {
	ok := `{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"2"},"statuses":[{"id":"wamid.x","status":"sent","timestamp":"1750000000","recipient_id":"16505551234"}]}}]}]}`
	if err := ValidateWebhook([]byte(ok)); err != nil {
		t.Fatalf("status webhook: %v", err)
	}
	bad := strings.Replace(ok, `"entry":[`, `"entry":"x","e":[`, 1)
	if err := ValidateWebhook([]byte(bad)); err == nil || !strings.Contains(err.Error(), "/entry") {
		t.Fatalf("broken webhook: %v", err)
	}
}

// Validation compiles once: a request after the first is fast.
func TestValidationIsFast(t *testing.T) {
	body := []byte(`{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text","text":{"body":"hi"}}`)
	r := post(messages, "application/json", body)
	if err := ValidateRequest(r, body); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	const n = 200
	for i := 0; i < n; i++ {
		if err := ValidateRequest(r, body); err != nil {
			t.Fatal(err)
		}
	}
	if per := time.Since(start) / n; per > 5*time.Millisecond {
		t.Fatalf("%v per validation", per)
	}
}
