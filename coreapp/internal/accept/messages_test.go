package accept

import (
	"encoding/json"
	"fmt"
	"slices"
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
		`{"to":"15550100001","text":{"body":"` + strings.Repeat("é", 4096) + `"}}`,
		`{"to":"15550100001","context":{"message_id":"gBEGkYiEB1VXAglK1ZEqA1YKPrU"},"text":{"body":"a reply"}}`,
		`{"to":"15550100001","type":"hsm","hsm":{"namespace":"ns","element_name":"hello","language":{"policy":"deterministic","code":"en"},"localizable_params":[{"default":"x"},{"default":"$1","currency":{"currency_code":"USD","amount_1000":1000}},{"default":"d","date_time":{"unix_epoch":1700000000}},{"default":"d","date_time":{"component":{"day_of_week":1,"month":2,"hour":23}}}]}}`,
		`{"to":"15550100001","type":"image","image":{"link":"https://example.com/a.png","provider":{"name":"cdn"}}}`,
		`{"to":"15550100001","type":"reaction","reaction":{"message_id":"gBEG1","emoji":"\ud83d\udc4d"}}`,
		`{"to":"15550100001","type":"reaction","reaction":{"message_id":"gBEG1","emoji":""}}`,
		`{"to":"15550100001","type":"interactive","interactive":{"type":"list","header":{"type":"text","text":"h"},"body":{"text":"b"},"footer":{"text":"f"},"action":{"button":"open","sections":[{"title":"s1","rows":[{"id":"1","title":"t","description":"d"},{"id":"2","title":"t"}]},{"title":"s2","rows":[{"id":"3","title":"t"},{"id":"4","title":"t"},{"id":"5","title":"t"},{"id":"6","title":"t"},{"id":"7","title":"t"},{"id":"8","title":"t"},{"id":"9","title":"t"},{"id":"10","title":"t"}]}]}}}`,
		`{"to":"15550100001","type":"interactive","interactive":{"type":"list","body":{"text":"b"},"action":{"button":"open","sections":[{"rows":[{"id":"1","title":"no section title"}]}]}}}`,
		`{"to":"15550100001","type":"interactive","interactive":{"type":"button","header":{"type":"video","video":{"link":"https://e.com/v.mp4"}},"body":{"text":"b"},"action":{"buttons":[{"type":"reply","reply":{"id":"a","title":"A"}},{"type":"reply","reply":{"id":"b","title":"B"}},{"type":"reply","reply":{"id":"c","title":"C"}}]}}}`,
		`{"to":"15550100001","type":"interactive","interactive":{"type":"product","action":{"catalog_id":"c","product_retailer_id":"p"}}}`,
		`{"to":"15550100001","type":"interactive","interactive":{"type":"product_list","header":{"type":"text","text":"h"},"body":{"text":"b"},"action":{"catalog_id":"c","sections":[{"title":"a","product_items":[{"product_retailer_id":"1"}]},{"title":"b","product_items":[{"product_retailer_id":"2"}]}]}}}`,
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
	for _, b := range []string{
		`{"to":"15550100001","type":"audio","audio":{"id":"M"}}`,
		`{"to":"15550100001","type":"template","template":{"namespace":"ns","name":"n","language":{"code":"en"},"components":[{"type":"header","parameters":[{"type":"document","document":{"id":"M"}}]}]}}`,
		`{"to":"15550100001","type":"interactive","interactive":{"type":"button","header":{"type":"image","image":{"id":"M"}},"body":{"text":"b"},"action":{"buttons":[{"type":"reply","reply":{"id":"a","title":"A"}}]}}}`,
	} {
		m, bad := parseMessage([]byte(b))
		if bad != nil || len(m.MediaIDs) != 1 || m.MediaIDs[0] != "M" {
			t.Errorf("%s: media id not collected: %+v %v", b, bad, m)
		}
	}
	m, bad := parseMessage([]byte(`{"to":"15550100001","type":"document","document":{"link":"https://cdn.example.com/d.pdf","provider":{"name":"cdn"}}}`))
	if bad != nil || !slices.Equal(m.MediaProviders, []string{"cdn"}) || !strings.Contains(string(m.Body), `"provider":{"name":"cdn"}`) {
		t.Errorf("provider not kept: %+v %+v", bad, m)
	}
}

func TestParseMessageRefusesBadInput(t *testing.T) {
	long := strings.Repeat("é", 4097) // characters, not bytes, count
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
		// context
		{`{"to":"15550100001","context":{},"text":{"body":"x"}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","context":{"message_id":""},"text":{"body":"x"}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","context":"gBEG1","text":{"body":"x"}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"reaction","context":{"message_id":"m"},"reaction":{"message_id":"m","emoji":""}}`, apierror.ParameterInvalid},
		// media providers
		{`{"to":"15550100001","type":"image","image":{"link":"https://e.com/a","provider":{}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"image","image":{"link":"https://e.com/a","provider":{"name":5}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"sticker","sticker":{"link":"https://e.com/a","caption":"x"}}`, apierror.ParameterInvalid},
		// hsm
		{`{"to":"15550100001","type":"hsm"}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"hsm","hsm":{"namespace":"ns","language":{"code":"en"},"localizable_params":[]}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"hsm","hsm":{"namespace":"ns","element_name":"e","language":{"code":"en"}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"hsm","hsm":{"namespace":"ns","element_name":"e","language":{"code":"en"},"localizable_params":[{}]}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"hsm","hsm":{"namespace":"ns","element_name":"e","language":{"code":"en"},"localizable_params":[{"default":"x","currency":{"currency_code":"DOLLARS","amount_1000":1}}]}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"hsm","hsm":{"namespace":"ns","element_name":"e","language":{"code":"en"},"localizable_params":[{"default":"x","date_time":{"component":{"month":13}}}]}}`, apierror.ParameterInvalid},
		// reaction
		{`{"to":"15550100001","type":"reaction"}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"reaction","reaction":{"emoji":"x"}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"reaction","reaction":{"message_id":"m"}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"reaction","reaction":{"message_id":"m","emoji":"not one emoji at all"}}`, apierror.ParameterInvalid},
		// interactive
		{`{"to":"15550100001","type":"interactive"}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"carousel","action":{}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"list","body":{"text":"b"}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"list","action":{"button":"b","sections":[{"rows":[{"id":"1","title":"t"}]}]}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"list","body":{"text":"b"},"action":{"sections":[{"rows":[{"id":"1","title":"t"}]}]}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"list","body":{"text":"b"},"action":{"button":"a button label over twenty","sections":[{"rows":[{"id":"1","title":"t"}]}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"list","body":{"text":"b"},"action":{"button":"b","sections":[]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"list","body":{"text":"b"},"action":{"button":"b","sections":[{"rows":[]}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"list","body":{"text":"b"},"action":{"button":"b","sections":[{"rows":[{"id":"1","title":"t"}]},{"title":"s","rows":[{"id":"2","title":"t"}]}]}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"list","body":{"text":"b"},"action":{"button":"b","sections":[{"rows":[{"id":"1","title":"t","description":"` + strings.Repeat("d", 73) + `"}]}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"list","body":{"text":"b"},"action":{"button":"b","sections":[{"rows":[{"id":"1","title":"t"},{"id":"1","title":"u"}]}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"list","body":{"text":"b"},"action":{"button":"b","sections":[{"title":"a","rows":[{"id":"1","title":"t"},{"id":"2","title":"t"},{"id":"3","title":"t"},{"id":"4","title":"t"},{"id":"5","title":"t"},{"id":"6","title":"t"}]},{"title":"b","rows":[{"id":"7","title":"t"},{"id":"8","title":"t"},{"id":"9","title":"t"},{"id":"10","title":"t"},{"id":"11","title":"t"}]}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"list","header":{"type":"image","image":{"link":"https://e.com/a"}},"body":{"text":"b"},"action":{"button":"b","sections":[{"rows":[{"id":"1","title":"t"}]}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"button","body":{"text":"` + strings.Repeat("b", 1025) + `"},"action":{"buttons":[{"type":"reply","reply":{"id":"a","title":"A"}}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"button","body":{"text":"b"},"footer":{"text":"` + strings.Repeat("f", 61) + `"},"action":{"buttons":[{"type":"reply","reply":{"id":"a","title":"A"}}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"button","header":{"type":"text"},"body":{"text":"b"},"action":{"buttons":[{"type":"reply","reply":{"id":"a","title":"A"}}]}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"button","body":{"text":"b"},"action":{"buttons":[]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"button","body":{"text":"b"},"action":{"buttons":[{"type":"url","reply":{"id":"a","title":"A"}}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"button","body":{"text":"b"},"action":{"buttons":[{"type":"reply","reply":{"id":"a","title":"a title over twenty chars"}}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"button","body":{"text":"b"},"action":{"buttons":[{"type":"reply","reply":{"id":"a","title":"A"}},{"type":"reply","reply":{"id":"b","title":"A"}}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"product","action":{"catalog_id":"c"}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"product_list","body":{"text":"b"},"action":{"catalog_id":"c","sections":[{"product_items":[{"product_retailer_id":"1"}]}]}}}`, apierror.ParameterMissing},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"product_list","header":{"type":"text","text":"h"},"body":{"text":"b"},"action":{"catalog_id":"c","sections":[{"product_items":[]}]}}}`, apierror.ParameterInvalid},
		{`{"to":"15550100001","type":"interactive","interactive":{"type":"product_list","header":{"type":"text","text":"h"},"body":{"text":"b"},"action":{"catalog_id":"c","sections":[{"title":"a","product_items":` + items(16) + `},{"title":"b","product_items":` + items(15) + `}]}}}`, apierror.ParameterInvalid},
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

// items is a JSON array of n product items.
func items(n int) string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf(`{"product_retailer_id":"p%d"}`, i)
	}
	return "[" + strings.Join(s, ",") + "]"
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

// BenchmarkParseMessage measures the accept path's validation of a typical
// text message (go test -run '^$' -bench ParseMessage ./coreapp/).
func BenchmarkParseMessage(b *testing.B) {
	body := []byte(`{"to":"+1 555-010-0001","type":"text","preview_url":false,"text":{"body":"Your order 1234 has shipped and will arrive on Tuesday."}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, bad := parseMessage(body); bad != nil {
			b.Fatal(bad.details)
		}
	}
}
