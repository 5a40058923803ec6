package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

func TestParseMessageAcceptsEveryType(t *testing.T) {
	good := []string{
		`{"to":"15550100001","type":"text","preview_url":true,"text":{"body":"hi"}}`,
		`{"to":"+1 (555) 010-0001","text":{"body":"type defaults to text"}}`,
		`{"to":"15550100001","recipient_type":"individual","type":"template","template":{"namespace":"ns","name":"hello","language":{"policy":"deterministic","code":"en"},
			"components":[{"type":"header","parameters":[{"type":"image","image":{"link":"https://example.com/a.png"}}]},
			{"type":"body","parameters":[{"type":"text","text":"x"},{"type":"currency","currency":{"fallback_value":"$1","code":"USD","amount_1000":1000}},{"type":"date_time","date_time":{"fallback_value":"today"}}]},
			{"type":"button","sub_type":"quick_reply","index":"0","parameters":[{"type":"payload","payload":"p"}]}]}}`,
		`{"to":"15550100001","type":"image","image":{"link":"https://example.com/a.png","caption":"c"}}`,
		`{"to":"15550100001","type":"audio","audio":{"id":"0b5e9b8a-3f5c-4d8e-9a1b-2c3d4e5f6a7b"}}`,
		`{"to":"15550100001","type":"video","video":{"link":"http://example.com/v.mp4"}}`,
		`{"to":"15550100001","type":"document","document":{"link":"https://example.com/d.pdf","filename":"d.pdf","caption":"c"}}`,
		`{"to":"15550100001","type":"sticker","sticker":{"link":"https://example.com/s.webp"}}`,
		`{"to":"15550100001","type":"location","location":{"latitude":52.5,"longitude":13.4,"name":"n","address":"a"}}`,
		`{"to":"15550100001","type":"contacts","contacts":[{"name":{"formatted_name":"Ann"},"phones":[{"phone":"+1"}],"birthday":"2000-01-31"}]}`,
	}
	for _, b := range good {
		m, bad := parseMessage([]byte(b))
		if bad != nil {
			t.Errorf("%s: refused with %d %s", b, bad.code, bad.details)
			continue
		}
		var doc map[string]any
		if err := json.Unmarshal(m.Body, &doc); err != nil || doc["type"] != m.Type {
			t.Errorf("%s: stored body %s does not carry type %q", b, m.Body, m.Type)
		}
	}
	m, _ := parseMessage([]byte(`{"to":"15550100001","type":"audio","audio":{"id":"0b5e9b8a-3f5c-4d8e-9a1b-2c3d4e5f6a7b"}}`))
	if len(m.MediaIDs) != 1 {
		t.Errorf("media id not collected: %v", m.MediaIDs)
	}
}

func TestParseMessageRefusesBadInput(t *testing.T) {
	long := strings.Repeat("x", maxTextBody+1)
	cases := []struct {
		body string
		code int
	}{
		{`not json`, apierror.RequestNotValid},
		{`[1,2]`, apierror.RequestNotValid},
		{`{"to":"1"} {"to":"2"}`, apierror.RequestNotValid},
		{`{"text":{"body":"hi"}}`, apierror.ParameterMissing},
		{`{"to":15550100001,"text":{"body":"hi"}}`, apierror.ParameterInvalid},
		{`{"to":"abc","text":{"body":"hi"}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"fax"}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":7}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","recipient_type":"group","text":{"body":"hi"}}`, apierror.ParameterInvalid},
		// text
		{`{"to":"15550100001","type":"text"}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"text","text":{}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"text","text":"hi"}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"text","text":{"body":5}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"text","text":{"body":"  "}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"text","text":{"body":"` + long + `"}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"text","preview_url":"yes","text":{"body":"hi"}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"image","preview_url":true,"image":{"link":"https://e.com/a"}}`, apierror.ParameterInvalid},
		// template
		{`{"to":"15550100001","type":"template"}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"template","template":{"name":"n","language":{"code":"en"}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"template","template":{"namespace":"ns","language":{"code":"en"}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"template","template":{"namespace":"ns","name":"n"}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"template","template":{"namespace":"ns","name":"n","language":{}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"template","template":{"namespace":"ns","name":"n","language":{"code":"en","policy":"x"}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"template","template":{"namespace":"ns","name":"n","language":{"code":"en"},"components":{}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"template","template":{"namespace":"ns","name":"n","language":{"code":"en"},"components":[{"type":"footer"}]}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"template","template":{"namespace":"ns","name":"n","language":{"code":"en"},"components":[{"type":"button","sub_type":"url"}]}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"template","template":{"namespace":"ns","name":"n","language":{"code":"en"},"components":[{"type":"body","parameters":[{"type":"text"}]}]}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"template","template":{"namespace":"ns","name":"n","language":{"code":"en"},"components":[{"type":"body","parameters":[{"type":"currency","currency":{"fallback_value":"$1","code":"USD","amount_1000":"1"}}]}]}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"template","template":{"namespace":"ns","name":"n","language":{"code":"en"},"components":[{"type":"body","parameters":[{"type":"sound"}]}]}}`, apierror.ParameterInvalid},
		// media
		{`{"to":"15550100001","type":"image"}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"image","image":{}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"image","image":{"id":"a","link":"https://e.com/a"}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"video","video":{"link":"ftp://e.com/a"}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"document","document":{"id":5}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"audio","audio":{"link":"https://e.com/a","caption":"no"}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"image","image":{"link":"https://e.com/a","filename":"a.png"}}`, apierror.ParameterInvalid},
		// location
		{`{"to":"15550100001","type":"location","location":{"latitude":1}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"location","location":{"latitude":"1","longitude":2}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"location","location":{"latitude":91,"longitude":2}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"location","location":{"latitude":1,"longitude":2,"name":3}}`, apierror.ParameterInvalid},
		// contacts
		{`{"to":"15550100001","type":"contacts"}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"contacts","contacts":[]}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"contacts","contacts":[{}]}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"contacts","contacts":[{"name":{"first_name":"A"}}]}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"contacts","contacts":[{"name":{"formatted_name":"A"},"phones":["+1"]}]}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"contacts","contacts":[{"name":{"formatted_name":"A"},"birthday":"31/01/2000"}]}`, apierror.ParameterInvalid},
	}
	for _, tc := range cases {
		_, bad := parseMessage([]byte(tc.body))
		if bad == nil {
			t.Errorf("%.120s: accepted, want %d", tc.body, tc.code)
			continue
		}
		if bad.code != tc.code || bad.details == "" {
			t.Errorf("%.120s: refused with %d %q, want %d", tc.body, bad.code, bad.details, tc.code)
		}
	}
}

func TestMessageIDsAreUnique(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 10000; i++ {
		id := newMessageID()
		if seen[id] || !strings.HasPrefix(id, "gBEG") || len(id) != 26 {
			t.Fatalf("id %q repeated or malformed", id)
		}
		seen[id] = true
	}
}
