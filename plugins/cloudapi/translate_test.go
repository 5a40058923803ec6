package cloudapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/metaspec"
)

// mapResolver resolves from fixed maps: the translation's lookups, not the
// network (the Graph API test server checks what is really sent).
type mapResolver struct {
	wamids map[string]string
	media  map[string]string
	err    error
}

func (m mapResolver) WAMID(_ context.Context, id string) (string, error) {
	return m.wamids[id], m.err
}

func (m mapResolver) MediaID(_ context.Context, id string) (string, error) {
	if m.err != nil {
		return "", m.err
	}
	if v, ok := m.media[id]; ok {
		return v, nil
	}
	return "", &BadMessage{Reason: "media " + id + " is not in the media directory"}
}

var testResolver = mapResolver{
	wamids: map[string]string{"our-1": "wamid.HBgLMTU1NTAxMDQwMDEVAgARGBI="},
	media:  map[string]string{"3f1c0f5e-8a7e-4a8e-9d7e-0c1f2b3a4d5e": "1055558811112222"},
}

// translateCases are On-Premises bodies the gateway accepts (the
// conformance examples of internal/openapi/spec/50-messages.yaml) and the
// Cloud API bodies they become.
var translateCases = []struct {
	name string
	to   string
	in   string
	want string
}{
	{"text with preview", "15550104001",
		`{"to":"15550104001","type":"text","preview_url":true,"recipient_type":"individual","text":{"body":"see https://example.com"}}`,
		`{"type":"text","text":{"body":"see https://example.com","preview_url":true}}`},
	{"type defaults to text, punctuated recipient", "+1 555-010-4002",
		`{"to":"+1 555-010-4002","text":{"body":"hello"}}`,
		`{"to":"15550104002","type":"text","text":{"body":"hello"}}`},
	{"reply to our message names its wamid", "15550104003",
		`{"to":"15550104003","context":{"message_id":"our-1"},"text":{"body":"quoted"}}`,
		`{"type":"text","context":{"message_id":"wamid.HBgLMTU1NTAxMDQwMDEVAgARGBI="},"text":{"body":"quoted"}}`},
	{"reply to an inbound message keeps its wamid", "15550104003",
		`{"to":"15550104003","context":{"message_id":"wamid.INBOUND"},"text":{"body":"quoted"}}`,
		`{"type":"text","context":{"message_id":"wamid.INBOUND"},"text":{"body":"quoted"}}`},
	{"template with every parameter type", "15550104004",
		`{"to":"15550104004","type":"template","template":{"namespace":"cdb2df51_9816_c754_c5a4_64cdabdcad3e","name":"order_update","language":{"policy":"deterministic","code":"en"},
		  "components":[{"type":"header","parameters":[{"type":"image","image":{"link":"https://example.com/a.png","caption":"x"}}]},
		    {"type":"body","parameters":[{"type":"text","text":"Ann"},{"type":"currency","currency":{"fallback_value":"$100.99","code":"USD","amount_1000":100990}},{"type":"date_time","date_time":{"fallback_value":"February 25, 1977"}}]},
		    {"type":"button","sub_type":"quick_reply","index":1,"parameters":[{"type":"payload","payload":"yes"}]}]}}`,
		`{"type":"template","template":{"name":"order_update","language":{"policy":"deterministic","code":"en"},
		  "components":[{"type":"header","parameters":[{"type":"image","image":{"link":"https://example.com/a.png"}}]},
		    {"type":"body","parameters":[{"type":"text","text":"Ann"},{"type":"currency","currency":{"fallback_value":"$100.99","code":"USD","amount_1000":100990}},{"type":"date_time","date_time":{"fallback_value":"February 25, 1977"}}]},
		    {"type":"button","sub_type":"quick_reply","index":"1","parameters":[{"type":"payload","payload":"yes"}]}]}}`},
	{"template with a fallback policy and our document", "15550104004",
		`{"to":"15550104004","type":"template","template":{"namespace":"ns","name":"invoice","language":{"policy":"fallback","code":"en_US"},
		  "components":[{"type":"header","parameters":[{"type":"document","document":{"id":"3f1c0f5e-8a7e-4a8e-9d7e-0c1f2b3a4d5e","filename":"i.pdf"}}]}]}}`,
		`{"type":"template","template":{"name":"invoice","language":{"policy":"deterministic","code":"en_US"},
		  "components":[{"type":"header","parameters":[{"type":"document","document":{"id":"1055558811112222","filename":"i.pdf"}}]}]}}`},
	{"legacy hsm becomes a template", "15550104005",
		`{"to":"15550104005","type":"hsm","hsm":{"namespace":"cdb2df51_9816_c754_c5a4_64cdabdcad3e","element_name":"hello_world","language":{"policy":"deterministic","code":"en"},
		  "localizable_params":[{"default":"Ann"},{"default":"$100.99","currency":{"currency_code":"usd","amount_1000":100990}},{"default":"today","date_time":{"unix_epoch":1700000000}},
		    {"default":"Tuesday","date_time":{"component":{"day_of_week":2,"year":2026,"month":11,"day_of_month":30,"hour":9,"minute":5}}}]}}`,
		`{"type":"template","template":{"name":"hello_world","language":{"policy":"deterministic","code":"en"},"components":[{"type":"body","parameters":[
		  {"type":"text","text":"Ann"},{"type":"currency","currency":{"fallback_value":"$100.99","code":"USD","amount_1000":100990}},
		  {"type":"date_time","date_time":{"fallback_value":"today"}},{"type":"date_time","date_time":{"fallback_value":"Tuesday"}}]}]}}`},
	{"image by link with caption", "15550104006",
		`{"to":"15550104006","type":"image","image":{"link":"https://example.com/a.png","caption":"a picture"}}`,
		`{"type":"image","image":{"link":"https://example.com/a.png","caption":"a picture"}}`},
	{"image by our upload id", "15550104007",
		`{"to":"15550104007","type":"image","image":{"id":"3f1c0f5e-8a7e-4a8e-9d7e-0c1f2b3a4d5e"}}`,
		`{"type":"image","image":{"id":"1055558811112222"}}`},
	{"audio", "15550104008",
		`{"to":"15550104008","type":"audio","audio":{"link":"https://example.com/a.ogg"}}`,
		`{"type":"audio","audio":{"link":"https://example.com/a.ogg"}}`},
	{"video through a media provider loses the provider", "15550104019",
		`{"to":"15550104019","type":"video","video":{"link":"https://cdn.example.com/v.mp4","caption":"v","provider":{"name":"my-cdn"}}}`,
		`{"type":"video","video":{"link":"https://cdn.example.com/v.mp4","caption":"v"}}`},
	{"document with filename", "15550104010",
		`{"to":"15550104010","type":"document","document":{"link":"https://example.com/d.pdf","filename":"d.pdf","caption":"the invoice"}}`,
		`{"type":"document","document":{"link":"https://example.com/d.pdf","filename":"d.pdf","caption":"the invoice"}}`},
	{"sticker", "15550104011",
		`{"to":"15550104011","type":"sticker","sticker":{"link":"https://example.com/s.webp"}}`,
		`{"type":"sticker","sticker":{"link":"https://example.com/s.webp"}}`},
	{"location", "15550104012",
		`{"to":"15550104012","type":"location","location":{"latitude":37.4847,"longitude":-122.1477,"name":"HQ","address":"1 Hacker Way"}}`,
		`{"type":"location","location":{"latitude":37.4847,"longitude":-122.1477,"name":"HQ","address":"1 Hacker Way"}}`},
	{"contacts card", "15550104013",
		`{"to":"15550104013","type":"contacts","contacts":[{"name":{"formatted_name":"John Smith","first_name":"John","last_name":"Smith"},"birthday":"2012-08-18",
		  "phones":[{"phone":"+1 (940) 555-1234","type":"HOME"},{"phone":"+1 (650) 555-1234","type":"WORK","wa_id":"16505551234"},{"phone":"+1 650 555 0000","type":"CELL"}],
		  "emails":[{"email":"test@example.com","type":"work"}],"urls":[{"url":"https://example.com","type":"WORK"}],
		  "addresses":[{"street":"1 Hacker Way","city":"Menlo Park","state":"CA","zip":"94025","country":"United States","country_code":"us","type":"WORK"}],
		  "org":{"company":"Example","department":"Design","title":"Manager"},"extra":"dropped"}]}`,
		`{"type":"contacts","contacts":[{"name":{"formatted_name":"John Smith","first_name":"John","last_name":"Smith"},"birthday":"2012-08-18",
		  "phones":[{"phone":"+1 (940) 555-1234","type":"HOME"},{"phone":"+1 (650) 555-1234","type":"WORK","wa_id":"16505551234"},{"phone":"+1 650 555 0000"}],
		  "emails":[{"email":"test@example.com","type":"WORK"}],"urls":[{"url":"https://example.com","type":"WORK"}],
		  "addresses":[{"street":"1 Hacker Way","city":"Menlo Park","state":"CA","zip":"94025","country":"United States","country_code":"us","type":"WORK"}],
		  "org":{"company":"Example","department":"Design","title":"Manager"}}]}`},
	{"interactive list", "15550104014",
		`{"to":"15550104014","type":"interactive","interactive":{"type":"list","header":{"type":"text","text":"Our menu"},"body":{"text":"Pick one"},"footer":{"text":"Thanks"},
		  "action":{"button":"See options","sections":[{"title":"Mains","rows":[{"id":"m1","title":"Pasta","description":"with tomatoes"},{"id":"m2","title":"Soup"}]},{"title":"Desserts","rows":[{"id":"d1","title":"Cake"}]}]}}}`,
		`{"type":"interactive","interactive":{"type":"list","header":{"type":"text","text":"Our menu"},"body":{"text":"Pick one"},"footer":{"text":"Thanks"},
		  "action":{"button":"See options","sections":[{"title":"Mains","rows":[{"id":"m1","title":"Pasta","description":"with tomatoes"},{"id":"m2","title":"Soup"}]},{"title":"Desserts","rows":[{"id":"d1","title":"Cake"}]}]}}}`},
	{"interactive buttons with our image in the header", "15550104015",
		`{"to":"15550104015","type":"interactive","interactive":{"type":"button","header":{"type":"image","image":{"id":"3f1c0f5e-8a7e-4a8e-9d7e-0c1f2b3a4d5e"}},"body":{"text":"Keep the booking?"},
		  "action":{"buttons":[{"type":"reply","reply":{"id":"yes","title":"Yes"}},{"type":"reply","reply":{"id":"no","title":"No"}}]}}}`,
		`{"type":"interactive","interactive":{"type":"button","header":{"type":"image","image":{"id":"1055558811112222"}},"body":{"text":"Keep the booking?"},
		  "action":{"buttons":[{"type":"reply","reply":{"id":"yes","title":"Yes"}},{"type":"reply","reply":{"id":"no","title":"No"}}]}}}`},
	{"interactive product", "15550104016",
		`{"to":"15550104016","type":"interactive","interactive":{"type":"product","body":{"text":"This one"},"action":{"catalog_id":"367025965434465","product_retailer_id":"SKU-1"}}}`,
		`{"type":"interactive","interactive":{"type":"product","body":{"text":"This one"},"action":{"catalog_id":"367025965434465","product_retailer_id":"SKU-1"}}}`},
	{"interactive product list", "15550104017",
		`{"to":"15550104017","type":"interactive","interactive":{"type":"product_list","header":{"type":"text","text":"Our shoes"},"body":{"text":"Have a look"},
		  "action":{"catalog_id":"367025965434465","sections":[{"title":"Running","product_items":[{"product_retailer_id":"SKU-1"}]}]}}}`,
		`{"type":"interactive","interactive":{"type":"product_list","header":{"type":"text","text":"Our shoes"},"body":{"text":"Have a look"},
		  "action":{"catalog_id":"367025965434465","sections":[{"title":"Running","product_items":[{"product_retailer_id":"SKU-1"}]}]}}}`},
	{"reaction to our message", "15550104018",
		`{"to":"15550104018","type":"reaction","reaction":{"message_id":"our-1","emoji":"\ud83d\udc4d"}}`,
		`{"type":"reaction","reaction":{"message_id":"wamid.HBgLMTU1NTAxMDQwMDEVAgARGBI=","emoji":"\ud83d\udc4d"}}`},
	{"reaction removed", "15550104018",
		`{"to":"15550104018","type":"reaction","reaction":{"message_id":"wamid.X","emoji":""}}`,
		`{"type":"reaction","reaction":{"message_id":"wamid.X","emoji":""}}`},
}

func TestTranslate(t *testing.T) {
	for _, tc := range translateCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Translate(context.Background(), "our-id-7", tc.to, []byte(tc.in), testResolver)
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			var g, w map[string]any
			if err := json.Unmarshal(got, &g); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(tc.want), &w); err != nil {
				t.Fatalf("want is not JSON: %v", err)
			}
			// Every message carries these; a case's want may leave them out.
			for k, v := range map[string]any{"messaging_product": "whatsapp", "recipient_type": "individual", "biz_opaque_callback_data": "our-id-7", "to": tc.to} {
				if _, ok := w[k]; !ok {
					w[k] = v
				}
			}
			if !reflect.DeepEqual(g, w) {
				t.Errorf("Translate:\n got %s\nwant %s", got, mustJSON(w))
			}
		})
	}
}

// TestTranslateMeetsMetaDescription sends every translation through the
// validator of Meta's OpenAPI description (metaspec), as the Graph API test
// server does: a body Meta would refuse fails here.
func TestTranslateMeetsMetaDescription(t *testing.T) {
	for _, tc := range translateCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Translate(context.Background(), "our-id-7", tc.to, []byte(tc.in), testResolver)
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			r := httptest.NewRequest(http.MethodPost, "/v23.0/106540352242922/messages", bytes.NewReader(got))
			r.Header.Set("Content-Type", "application/json")
			r.Header.Set("Authorization", "Bearer test-token")
			if err := metaspec.ValidateRequest(r, got); err != nil {
				t.Errorf("Meta's description refuses %s: %v", got, err)
			}
		})
	}
}

// TestMetaDescriptionRefusesOnPremBodies shows the validator is not
// lenient: the On-Premises bodies as they are (no messaging_product, hsm,
// template namespace) are refused.
func TestMetaDescriptionRefusesOnPremBodies(t *testing.T) {
	for _, tc := range translateCases {
		r := httptest.NewRequest(http.MethodPost, "/v23.0/106540352242922/messages", strings.NewReader(tc.in))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Authorization", "Bearer test-token")
		if err := metaspec.ValidateRequest(r, []byte(tc.in)); err == nil {
			t.Errorf("%s: Meta's description takes the On-Premises body %s as it is", tc.name, tc.in)
		}
	}
}

func TestTranslateFailures(t *testing.T) {
	cases := []struct {
		name   string
		in     string
		r      Resolver
		badMsg bool
	}{
		{"media id not in the media directory", `{"to":"1555","type":"image","image":{"id":"gone"}}`, testResolver, true},
		{"unknown type", `{"to":"1555","type":"fax"}`, testResolver, true},
		{"not JSON", `{`, testResolver, true},
		{"database down while resolving a reply", `{"to":"1555","context":{"message_id":"our-1"},"text":{"body":"x"}}`, mapResolver{err: errors.New("db down")}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Translate(context.Background(), "id", "1555", []byte(tc.in), tc.r)
			if err == nil {
				t.Fatal("Translate succeeded")
			}
			if IsBadMessage(err) != tc.badMsg {
				t.Errorf("IsBadMessage(%v) = %v, want %v", err, IsBadMessage(err), tc.badMsg)
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
