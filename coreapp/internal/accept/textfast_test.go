package accept

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/multiconnect/multiconnect/internal/openapi"
)

// textSchemas is what conformsAsText was written for: components.schemas
// Message, MessageText and MessageContext of the OpenAPI document, without
// descriptions. A change to them fails TestTextShortcutMatchesSchema until
// conformsAsText is checked against it and this copy updated.
const textSchemas = `{"Message":{"dependentSchemas":{"context":{"properties":{"type":{"enum":["text","template","hsm","image","audio","video","document","sticker","location","contacts","interactive"]}}},"preview_url":{"properties":{"type":{"const":"text"}}}},"else":{"else":{"else":{"else":{"else":{"else":{"else":{"else":{"else":{"else":{"else":{"if":{"properties":{"type":{"const":"hsm"}}},"then":{"required":["hsm"]}},"if":{"properties":{"type":{"const":"reaction"}}},"then":{"required":["reaction"]}},"if":{"properties":{"type":{"const":"sticker"}}},"then":{"required":["sticker"]}},"if":{"properties":{"type":{"const":"contacts"}}},"then":{"required":["contacts"]}},"if":{"properties":{"type":{"const":"location"}}},"then":{"required":["location"]}},"if":{"properties":{"type":{"const":"interactive"}}},"then":{"required":["interactive"]}},"if":{"properties":{"type":{"const":"audio"}}},"then":{"required":["audio"]}},"if":{"properties":{"type":{"const":"video"}}},"then":{"required":["video"]}},"if":{"properties":{"type":{"const":"document"}}},"then":{"required":["document"]}},"if":{"properties":{"type":{"const":"image"}}},"then":{"required":["image"]}},"if":{"properties":{"type":{"const":"template"}}},"then":{"required":["template"]}},"if":{"properties":{"type":{"const":"text"}}},"properties":{"audio":{"$ref":"#/components/schemas/MediaAudio"},"contacts":{"$ref":"#/components/schemas/MessageContacts"},"context":{"$ref":"#/components/schemas/MessageContext"},"document":{"$ref":"#/components/schemas/MediaDocument"},"hsm":{"$ref":"#/components/schemas/MessageHSM"},"image":{"$ref":"#/components/schemas/MediaImage"},"interactive":{"$ref":"#/components/schemas/MessageInteractive"},"location":{"$ref":"#/components/schemas/MessageLocation"},"preview_url":{"type":"boolean"},"reaction":{"$ref":"#/components/schemas/MessageReaction"},"recipient_type":{"enum":["individual"],"type":"string"},"sticker":{"$ref":"#/components/schemas/MediaSticker"},"template":{"$ref":"#/components/schemas/MessageTemplate"},"text":{"$ref":"#/components/schemas/MessageText"},"to":{"maxLength":64,"minLength":1,"pattern":"[0-9]","type":"string"},"type":{"default":"text","enum":["text","template","hsm","image","audio","video","document","sticker","location","contacts","interactive","reaction"],"type":"string"},"video":{"$ref":"#/components/schemas/MediaVideo"}},"required":["to"],"then":{"required":["text"]},"type":"object"},"MessageContext":{"properties":{"message_id":{"maxLength":256,"minLength":1,"type":"string"}},"required":["message_id"],"type":"object"},"MessageText":{"properties":{"body":{"maxLength":4096,"minLength":1,"pattern":"\\S","type":"string"}},"required":["body"],"type":"object"}}`

func TestTextShortcutMatchesSchema(t *testing.T) {
	doc, err := openapi.Document()
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Components struct{ Schemas map[string]any }
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	got := map[string]any{}
	for _, name := range []string{"Message", "MessageText", "MessageContext"} {
		got[name] = withoutDescriptions(d.Components.Schemas[name])
	}
	b, _ := json.Marshal(got)
	if string(b) != textSchemas {
		t.Fatalf("the text message's schemas changed: check conformsAsText against them and update textSchemas to\n%s", b)
	}

	schema, err := messageSchema()
	if err != nil {
		t.Fatal(err)
	}
	// Values for each field (nil: absent), valid and not, around each
	// constraint the shortcut encodes.
	long := func(s string, n int) string { return strings.Repeat(s, n) }
	fields := []struct {
		name   string
		values []any
	}{
		{"to", []any{"15550100001", nil, "", "abc", "+", json.Number("15550100001"), true, long("1", 64), long("1", 65), long("é", 63) + "1", long("é", 64) + "1", "+1 (555) 010-0001", "٣"}},
		{"type", []any{nil, "text", "image", "TEXT", "", json.Number("7"), "reaction"}},
		{"recipient_type", []any{nil, "individual", "group", "", json.Number("1")}},
		{"preview_url", []any{nil, true, false, "yes", json.Number("0")}},
		{"context", []any{nil, map[string]any{"message_id": "gBEG1"}, map[string]any{"message_id": ""}, map[string]any{},
			map[string]any{"message_id": json.Number("1")}, "gBEG1", map[string]any{"message_id": long("é", 256)},
			map[string]any{"message_id": long("é", 257)}, map[string]any{"message_id": "x", "other": 1}}},
		{"text", []any{map[string]any{"body": "hi"}, nil, map[string]any{"body": ""}, map[string]any{"body": " \t\n\r\f"},
			map[string]any{"body": "\v"}, map[string]any{"body": "\u00a0"}, map[string]any{"body": long("é", 4096)},
			map[string]any{"body": long("é", 4097)}, map[string]any{"body": json.Number("1")}, "hi", map[string]any{},
			map[string]any{"body": "hi", "extra": true}, []any{"hi"}}},
		{"image", []any{nil, map[string]any{"link": "https://example.com/a.png"}, "x"}},
		{"reaction", []any{nil, map[string]any{"message_id": "gBEG1", "emoji": ""}}},
		{"unknown", []any{nil, json.Number("1"), map[string]any{"x": 1}}},
	}
	check := func(pick []int) bool {
		m := map[string]any{}
		for i, f := range fields {
			if v := f.values[pick[i]]; v != nil {
				m[f.name] = v
			}
		}
		// Through JSON, as parseMessage decodes a body.
		body, _ := json.Marshal(m)
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		fast := conformsAsText(v.(map[string]any))
		if bad := openapi.ValidateValue(schema, v); fast && bad != nil {
			t.Errorf("the shortcut accepts %s, which the schema refuses: %s", body, bad.Details)
		}
		return fast
	}
	// Every value of every field with the others at their first (valid)
	// value, then random combinations.
	accepted := 0
	for i, f := range fields {
		for j := range f.values {
			pick := make([]int, len(fields))
			pick[i] = j
			if check(pick) {
				accepted++
			}
		}
	}
	rng := rand.New(rand.NewPCG(11, 2026))
	for range 3000 {
		pick := make([]int, len(fields))
		for i, f := range fields {
			if rng.IntN(2) == 0 { // half the fields at their valid value
				pick[i] = rng.IntN(len(f.values))
			}
		}
		if check(pick) {
			accepted++
		}
	}
	if accepted < 20 {
		t.Errorf("the shortcut accepted only %d variants: it no longer takes plain text messages", accepted)
	}
	t.Logf("%d variants the shortcut accepted, all accepted by the schema", accepted)
	// The common messages take the shortcut.
	for _, b := range []string{
		`{"to":"+1 555-010-0001","type":"text","preview_url":false,"text":{"body":"Your order has shipped."}}`,
		`{"to":"15550100001","text":{"body":"type defaults to text"}}`,
		`{"to":"15550100001","recipient_type":"individual","context":{"message_id":"gBEG1"},"text":{"body":"a reply"}}`,
	} {
		var m map[string]any
		if err := json.Unmarshal([]byte(b), &m); err != nil || !conformsAsText(m) {
			t.Errorf("%s does not take the shortcut", b)
		}
	}
}

func withoutDescriptions(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			if k != "description" {
				out[k] = withoutDescriptions(e)
			}
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = withoutDescriptions(e)
		}
		return out
	}
	return v
}
