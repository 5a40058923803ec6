package inbound

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/metaspec"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

func TestVerify(t *testing.T) {
	secret := []byte("app-secret")
	body := []byte(`{"object":"whatsapp_business_account","entry":[]}`)
	good := Sign(secret, body)
	if !strings.HasPrefix(good, "sha256=") || len(good) != len("sha256=")+64 {
		t.Fatalf("Sign = %q, want sha256= and 64 hex digits", good)
	}
	// A known vector: HMAC-SHA256 of "The quick brown fox jumps over the
	// lazy dog" keyed "key" (RFC 4231's companion example).
	if got := Sign([]byte("key"), []byte("The quick brown fox jumps over the lazy dog")); got != "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8" {
		t.Fatalf("Sign of the known vector = %s", got)
	}
	for _, c := range []struct {
		name, header string
		body         []byte
		want         error
	}{
		{"valid", good, body, nil},
		{"missing", "", body, ErrUnsigned},
		{"another secret", Sign([]byte("other"), body), body, ErrBadSignature},
		{"body changed", good, append([]byte(" "), body...), ErrBadSignature},
		{"sha1 form", "sha1=" + good[7:], body, ErrBadSignature},
		{"not hex", "sha256=zz" + good[9:], body, ErrBadSignature},
		{"truncated", good[:len(good)-2], body, ErrBadSignature},
		{"upper-case hex", "sha256=" + strings.ToUpper(good[7:]), body, nil},
	} {
		if err := Verify(secret, c.body, c.header); !errors.Is(err, c.want) {
			t.Errorf("%s: Verify = %v, want %v", c.name, err, c.want)
		}
	}
}

func TestCheckFresh(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	rec := func(ts int64) Record { return Record{Event: transport.Event{Timestamp: ts}} }
	day := int64(24 * 3600)
	for _, c := range []struct {
		name  string
		recs  []Record
		stale bool
	}{
		{"fresh", []Record{rec(now.Unix() - 10)}, false},
		{"a Meta retry after 7 days", []Record{rec(now.Unix() - 7*day)}, false},
		{"every event older than 8 days", []Record{rec(now.Unix() - 9*day), rec(now.Unix() - 8*day - 1)}, true},
		{"one fresh event among old ones", []Record{rec(now.Unix() - 30*day), rec(now.Unix() - day)}, false},
		{"no event at all", nil, false},
	} {
		err := CheckFresh(c.recs, now, DefaultMaxAge)
		if (err != nil) != c.stale || (err != nil && !errors.Is(err, ErrStale)) {
			t.Errorf("%s: CheckFresh = %v, stale %v", c.name, err, c.stale)
		}
	}
}

// webhook wraps values as Meta sends them.
func webhook(values ...string) []byte {
	var changes []string
	for _, v := range values {
		changes = append(changes, `{"field":"messages","value":{"messaging_product":"whatsapp",
			"metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},`+v+`}}`)
	}
	return []byte(`{"object":"whatsapp_business_account","entry":[{"id":"419561257915477","changes":[` + strings.Join(changes, ",") + `]}]}`)
}

const contact = `"contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}]`

// sent maps the wamids of our sends to our ids, as cloudapi_messages does.
var sent = map[string]string{"wamid.OURS1": "gBEGkYiEB1VXAglK1ZEqA1YKPrU"}

func lookup(_ context.Context, wamid string) (string, bool, error) {
	id, ok := sent[wamid]
	return id, ok, nil
}

func translate(t *testing.T, body []byte) *Translation {
	t.Helper()
	if err := validateWebhook(body); err != nil {
		t.Fatalf("the test's webhook is not one Meta would send: %v\n%s", err, body)
	}
	p, err := Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Translate(context.Background(), p, "", lookup)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// One inbound message of every type Meta's description has, each becoming
// the On-Premises inbound message document.
func TestTranslateMessages(t *testing.T) {
	const base = `"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383"`
	for _, c := range []struct {
		name, msg string
		system    bool
		want      string // the payload, as JSON
	}{
		{"text", `{` + base + `,"type":"text","text":{"body":"Does it come in another color?"}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"},"profile":{"name":"Sheena Nelson"}}`},
		{"text about a product of our message", `{` + base + `,"type":"text","text":{"body":"yes"},"context":{"from":"15550783881","id":"wamid.OURS1","referred_product":{"catalog_id":"194836987003835","product_retailer_id":"di9ozbzfi4"}}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"text","text":{"body":"yes"},"context":{"from":"15550783881","id":"gBEGkYiEB1VXAglK1ZEqA1YKPrU","referred_product":{"catalog_id":"194836987003835","product_retailer_id":"di9ozbzfi4"}},"profile":{"name":"Sheena Nelson"}}`},
		{"image", `{` + base + `,"type":"image","image":{"caption":"Taj Mahal","mime_type":"image/jpeg","sha256":"SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=","id":"1003383421387256"}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"image","image":{"caption":"Taj Mahal","mime_type":"image/jpeg","sha256":"SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=","id":"1003383421387256"},"profile":{"name":"Sheena Nelson"}}`},
		{"audio", `{` + base + `,"type":"audio","audio":{"mime_type":"audio/ogg","sha256":"abc=","id":"2001","voice":false}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"audio","audio":{"mime_type":"audio/ogg","sha256":"abc=","id":"2001","voice":false},"profile":{"name":"Sheena Nelson"}}`},
		{"voice note", `{` + base + `,"type":"audio","audio":{"mime_type":"audio/ogg; codecs=opus","sha256":"abc=","id":"2002","voice":true}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"voice","voice":{"mime_type":"audio/ogg; codecs=opus","sha256":"abc=","id":"2002"},"profile":{"name":"Sheena Nelson"}}`},
		{"document", `{` + base + `,"type":"document","document":{"filename":"invoice.pdf","mime_type":"application/pdf","sha256":"abc=","id":"2003"}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"document","document":{"filename":"invoice.pdf","mime_type":"application/pdf","sha256":"abc=","id":"2003"},"profile":{"name":"Sheena Nelson"}}`},
		{"sticker", `{` + base + `,"type":"sticker","sticker":{"mime_type":"image/webp","sha256":"abc=","id":"2004","animated":false}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"sticker","sticker":{"mime_type":"image/webp","sha256":"abc=","id":"2004","animated":false},"profile":{"name":"Sheena Nelson"}}`},
		{"video", `{` + base + `,"type":"video","video":{"caption":"look","mime_type":"video/mp4","sha256":"abc=","id":"2005"}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"video","video":{"caption":"look","mime_type":"video/mp4","sha256":"abc=","id":"2005"},"profile":{"name":"Sheena Nelson"}}`},
		{"location", `{` + base + `,"type":"location","location":{"address":"101 Forest Ave, Palo Alto, CA 94301","latitude":37.44221496582,"longitude":-122.16165924072,"name":"Philz Coffee","url":"https://philzcoffee.com/"}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"location","location":{"address":"101 Forest Ave, Palo Alto, CA 94301","latitude":37.44221496582,"longitude":-122.16165924072,"name":"Philz Coffee","url":"https://philzcoffee.com/"},"profile":{"name":"Sheena Nelson"}}`},
		{"contacts", `{` + base + `,"type":"contacts","contacts":[{"name":{"first_name":"Lucía","last_name":"Gómez","formatted_name":"Lucía Gómez"},"phones":[{"phone":"+1 (983) 555-2319","wa_id":"19835552319","type":"MOBILE"}]}]}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"contacts","contacts":[{"name":{"first_name":"Lucía","last_name":"Gómez","formatted_name":"Lucía Gómez"},"phones":[{"phone":"+1 (983) 555-2319","wa_id":"19835552319","type":"MOBILE"}]}],"profile":{"name":"Sheena Nelson"}}`},
		{"reaction to our message", `{` + base + `,"type":"reaction","reaction":{"message_id":"wamid.OURS1","emoji":"👍"}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"reaction","reaction":{"message_id":"gBEGkYiEB1VXAglK1ZEqA1YKPrU","emoji":"👍"},"profile":{"name":"Sheena Nelson"}}`},
		{"button", `{` + base + `,"type":"button","context":{"from":"15550783881","id":"wamid.OURS1"},"button":{"payload":"Unsubscribe","text":"Unsubscribe"}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"button","context":{"from":"15550783881","id":"gBEGkYiEB1VXAglK1ZEqA1YKPrU"},"button":{"payload":"Unsubscribe","text":"Unsubscribe"},"profile":{"name":"Sheena Nelson"}}`},
		{"interactive list reply", `{` + base + `,"type":"interactive","context":{"from":"15550783881","id":"wamid.THEIRS"},"interactive":{"type":"list_reply","list_reply":{"id":"priority_express","title":"Priority Mail Express","description":"Next Day to 2 Days"}}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"interactive","context":{"from":"15550783881","id":"wamid.THEIRS"},"interactive":{"type":"list_reply","list_reply":{"id":"priority_express","title":"Priority Mail Express","description":"Next Day to 2 Days"}},"profile":{"name":"Sheena Nelson"}}`},
		{"interactive button reply", `{` + base + `,"type":"interactive","context":{"from":"15550783881","id":"wamid.OURS1"},"interactive":{"type":"button_reply","button_reply":{"id":"yes","title":"Yes"}}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"interactive","context":{"from":"15550783881","id":"gBEGkYiEB1VXAglK1ZEqA1YKPrU"},"interactive":{"type":"button_reply","button_reply":{"id":"yes","title":"Yes"}},"profile":{"name":"Sheena Nelson"}}`},
		{"order", `{` + base + `,"type":"order","order":{"catalog_id":"194836987003835","text":"","product_items":[{"product_retailer_id":"di9ozbzfi4","quantity":2,"item_price":30,"currency":"USD"}]}}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"order","order":{"catalog_id":"194836987003835","text":"","product_items":[{"product_retailer_id":"di9ozbzfi4","quantity":2,"item_price":30,"currency":"USD"}]},"profile":{"name":"Sheena Nelson"}}`},
		{"unsupported", `{` + base + `,"type":"unsupported","errors":[{"code":131051,"title":"Message type unknown","message":"Message type unknown","error_data":{"details":"Message type is currently not supported."}}]}`, false,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"unknown","errors":[{"code":501,"title":"Unknown message type","details":"Cloud API type unsupported"}],"profile":{"name":"Sheena Nelson"}}`},
		{"system: number changed", `{` + base + `,"type":"system","system":{"body":"User Sheena Nelson changed from 16505551234 to 12195555358","wa_id":"12195555358","type":"user_changed_number"}}`, true,
			`{"from":"16505551234","id":"wamid.IN1","timestamp":"1749416383","type":"system","system":{"body":"User Sheena Nelson changed from 16505551234 to 12195555358","new_wa_id":"12195555358","type":"user_changed_number","customer":"16505551234"}}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			value := `"messages":[` + c.msg + `]`
			if !c.system {
				value = contact + "," + value
			}
			tr := translate(t, webhook(value))
			if len(tr.Records) != 1 || len(tr.Skipped) != 0 {
				t.Fatalf("records %d, skipped %v", len(tr.Records), tr.Skipped)
			}
			r := tr.Records[0]
			e := r.Event
			if e.Kind != transport.EventInbound || e.MessageID != "wamid.IN1" || e.Recipient != "16505551234" || e.Timestamp != 1749416383 || r.DedupeKey != "wamid.IN1" {
				t.Errorf("event %+v, dedupe %q", e, r.DedupeKey)
			}
			assertJSON(t, e.Payload, c.want)
		})
	}
}

// Every status Meta sends, with our id from biz_opaque_callback_data, from
// the send records, or (a message not sent through us) the wamid itself.
func TestTranslateStatuses(t *testing.T) {
	for _, c := range []struct {
		name, status, wantID, wantStatus, wantDetails string
	}{
		{"sent with conversation and pricing, our id in the callback data",
			`{"id":"wamid.S1","status":"sent","timestamp":"1750263773","recipient_id":"16505551234","biz_opaque_callback_data":"our-id-1",
			"conversation":{"id":"6ceb9d929c1a1ec8fae8ad5d6b7d0e1b","expiration_timestamp":"1750350180","origin":{"type":"marketing"}},
			"pricing":{"billable":true,"pricing_model":"CBP","category":"marketing"}}`,
			"our-id-1", "sent",
			`{"conversation":{"id":"6ceb9d929c1a1ec8fae8ad5d6b7d0e1b","origin":{"type":"business_initiated"},"expiration_timestamp":1750350180},"pricing":{"billable":true,"pricing_model":"CBP","category":"business_initiated"}}`},
		{"delivered, found by wamid", `{"id":"wamid.OURS1","status":"delivered","timestamp":"1750263773","recipient_id":"16505551234",
			"conversation":{"id":"c2","origin":{"type":"service"}},"pricing":{"billable":false,"pricing_model":"PMP","category":"service"}}`,
			"gBEGkYiEB1VXAglK1ZEqA1YKPrU", "delivered",
			`{"conversation":{"id":"c2","origin":{"type":"user_initiated"}},"pricing":{"billable":false,"pricing_model":"PMP","category":"user_initiated"}}`},
		{"read of a message not sent through us", `{"id":"wamid.ELSEWHERE","status":"read","timestamp":"1750263773","recipient_id":"16505551234"}`,
			"wamid.ELSEWHERE", "read", ``},
		{"failed: re-engagement", `{"id":"wamid.OURS1","status":"failed","timestamp":"1750263773","recipient_id":"16505551234",
			"errors":[{"code":131047,"title":"Re-engagement message","message":"Re-engagement message","error_data":{"details":"Message failed to send because more than 24 hours have passed since the customer last replied to this number."}}]}`,
			"gBEGkYiEB1VXAglK1ZEqA1YKPrU", "failed",
			`{"errors":[{"code":470,"title":"Message failed to send because more than 24 hours have passed since the customer last replied to this number","details":"Cloud API error 131047: Re-engagement message: Message failed to send because more than 24 hours have passed since the customer last replied to this number."}]}`},
		{"failed: an unmapped code", `{"id":"wamid.OURS1","status":"failed","timestamp":"1750263773","recipient_id":"16505551234",
			"errors":[{"code":131053,"title":"Media upload error","message":"Media upload error"}]}`,
			"gBEGkYiEB1VXAglK1ZEqA1YKPrU", "failed",
			`{"errors":[{"code":1000,"title":"Generic error","details":"Cloud API error 131053: Media upload error"}]}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := translate(t, webhook(`"statuses":[`+c.status+`]`))
			if len(tr.Records) != 1 {
				t.Fatalf("records %d, skipped %v", len(tr.Records), tr.Skipped)
			}
			r := tr.Records[0]
			e := r.Event
			var wamid struct {
				ID string `json:"id"`
			}
			json.Unmarshal([]byte(c.status), &wamid)
			if e.Kind != transport.EventStatus || e.MessageID != c.wantID || e.Status != c.wantStatus || e.Recipient != "16505551234" ||
				e.Timestamp != 1750263773 || r.DedupeKey != wamid.ID+":"+c.wantStatus {
				t.Errorf("event %+v, dedupe %q", e, r.DedupeKey)
			}
			if c.wantDetails == "" {
				if len(e.Payload) != 0 {
					t.Errorf("payload %s, want none", e.Payload)
				}
				return
			}
			assertJSON(t, e.Payload, c.wantDetails)
			var d transport.StatusDetails
			if err := json.Unmarshal(e.Payload, &d); err != nil {
				t.Errorf("payload is not a StatusDetails: %v", err)
			}
		})
	}
}

// Statuses the description's enum lacks but Meta's reference documents
// (deleted, warning) keep their names; they are not validated against the
// description.
func TestTranslateDeletedAndWarning(t *testing.T) {
	for _, st := range []string{"deleted", "warning"} {
		p, err := Parse(webhook(`"statuses":[{"id":"wamid.OURS1","status":"` + st + `","timestamp":"1750263773","recipient_id":"16505551234"}]`))
		if err != nil {
			t.Fatal(err)
		}
		tr, err := Translate(context.Background(), p, "", lookup)
		if err != nil || len(tr.Records) != 1 {
			t.Fatalf("%s: %v %+v", st, err, tr)
		}
		if e := tr.Records[0].Event; e.Status != st || e.MessageID != "gBEGkYiEB1VXAglK1ZEqA1YKPrU" {
			t.Errorf("%s: event %+v", st, e)
		}
	}
}

// A webhook of several changes and contacts splits into one record per
// event in Meta's order; another number's change, another field and an
// event without a sender are left out with a reason.
func TestTranslateSplits(t *testing.T) {
	body := []byte(`{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
		{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"PN1"},
			"contacts":[{"profile":{"name":"A"},"wa_id":"111"},{"profile":{"name":"B"},"wa_id":"222"}],
			"messages":[{"from":"222","id":"wamid.B","timestamp":"100","type":"text","text":{"body":"b"}},
				{"from":"111","id":"wamid.A","timestamp":"101","type":"text","text":{"body":"a"}},
				{"id":"wamid.NOFROM","timestamp":"102","type":"text","text":{"body":"?"}}]}},
		{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"PN1"},
			"statuses":[{"id":"wamid.C","status":"read","timestamp":"103","recipient_id":"333"}]}},
		{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"2","phone_number_id":"PN2"},
			"statuses":[{"id":"wamid.D","status":"read","timestamp":"104","recipient_id":"444"}]}},
		{"field":"account_update","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"PN1"}}}]}]}`)
	p, err := Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Translate(context.Background(), p, "PN1", lookup)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range tr.Records {
		var doc struct {
			Profile struct{ Name string }
		}
		json.Unmarshal(r.Event.Payload, &doc)
		got = append(got, r.Event.Recipient+"/"+r.DedupeKey+"/"+doc.Profile.Name)
	}
	if want := "222/wamid.B/B 111/wamid.A/A 333/wamid.C:read/"; strings.Join(got, " ") != want {
		t.Errorf("records %v, want %s", got, want)
	}
	if len(tr.Skipped) != 3 {
		t.Errorf("skipped %q, want the sender-less message, PN2's change and account_update", tr.Skipped)
	}
	by, err := ByShard(tr.Records, 4)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for s, recs := range by {
		for _, r := range recs {
			n++
			if want, _ := strconv.Atoi(r.Event.Recipient); s < 0 || s > 3 || want == 0 {
				t.Errorf("shard %d for %s", s, r.Event.Recipient)
			}
		}
	}
	if n != 3 {
		t.Errorf("ByShard kept %d records of 3", n)
	}
}

func TestOnPremError(t *testing.T) {
	for cloud, want := range map[int]int{131047: 470, 131048: 471, 131026: 1026, 131051: 1026, 131021: 1013, 131030: 1013,
		131008: 1008, 131009: 1009, 131000: 1014, 132000: 2000, 132001: 2001, 132005: 2005, 132007: 2007, 132012: 2012,
		132015: 2001, 132016: 2001, 131053: 1000, 1: 1000} {
		got := OnPremError(CloudError{Code: cloud, Title: "t"})
		if got.Code != want || got.Title == "" || !strings.Contains(got.Details, strconv.Itoa(cloud)) {
			t.Errorf("%d: %+v, want code %d with the Cloud code in the details", cloud, got, want)
		}
	}
}

func assertJSON(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("payload %s: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want %s: %v", want, err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if string(gb) != string(wb) {
		t.Errorf("payload\n got %s\nwant %s", gb, wb)
	}
}

// validateWebhook checks a test's webhook against Meta's description, so
// the translations are tested on what Meta sends, not on what we think it
// sends.
func validateWebhook(body []byte) error { return metaspec.ValidateWebhook(body) }

// TestLeaveOut removes exactly the status records the rule declines, by
// their lowercased status, and keeps inbound messages.
func TestLeaveOut(t *testing.T) {
	status := func(id, st string) Record {
		return Record{Event: transport.Event{Kind: transport.EventStatus, MessageID: id, Status: st}}
	}
	tr := &Translation{Records: []Record{
		status("a", "sent"),
		{Event: transport.Event{Kind: transport.EventInbound, MessageID: "m"}},
		status("a", "delivered"),
		status("c", "failed"),
		status("c", "read"),
	}}
	var asked []string
	removed := tr.LeaveOut(func(st string) bool {
		asked = append(asked, st)
		return st == "delivered" || st == "failed"
	})
	if removed != 2 {
		t.Errorf("removed %d, want 2 (sent, read)", removed)
	}
	if got := strings.Join(asked, ","); got != "sent,delivered,failed,read" {
		t.Errorf("asked about %s, want sent,delivered,failed,read (statuses only)", got)
	}
	var kept []string
	for _, r := range tr.Records {
		kept = append(kept, r.Event.MessageID+":"+string(r.Event.Kind)+":"+r.Event.Status)
	}
	if got := strings.Join(kept, ","); got != "m:inbound:,a:status:delivered,c:status:failed" {
		t.Errorf("kept %s, want m:inbound:,a:status:delivered,c:status:failed, in order", got)
	}
}
