package simnet

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// The network takes every outbound type of the original, refuses a body
// that disagrees with its type, and reports injected statuses with their
// conversation, pricing and errors to the recipient's shard.
func TestMessageTypesAndInjectedStatuses(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	c := connect(t, addr, 0, 1, "a")
	keepPinging(t, c)
	msgs := []Message{
		{ID: "i1", To: "15550100001", Type: "interactive", Body: json.RawMessage(`{"to":"15550100001","type":"interactive","interactive":{"type":"button","body":{"text":"b"},"action":{"buttons":[{"type":"reply","reply":{"id":"y","title":"Yes"}}]}}}`)},
		{ID: "r1", To: "15550100001", Type: "reaction", Body: json.RawMessage(`{"to":"15550100001","type":"reaction","reaction":{"message_id":"i1","emoji":""}}`)},
		{ID: "h1", To: "15550100001", Type: "hsm", Body: json.RawMessage(`{"to":"15550100001","type":"hsm","hsm":{"namespace":"n","element_name":"e","language":{"code":"en"},"localizable_params":[]}}`)},
		{ID: "bad1", To: "15550100001", Type: "image", Body: json.RawMessage(`{"to":"15550100001","type":"text","text":{"body":"x"}}`)},
		{ID: "bad2", To: "15550100001", Type: "fax", Body: json.RawMessage(`{"type":"fax","fax":{}}`)},
		{ID: "bad3", To: "15550100001", Type: "sticker", Body: json.RawMessage(`{"type":"sticker"}`)},
	}
	res, err := c.Send(ctxT(t), msgs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		want := ResultAccepted
		if i >= 3 {
			want = ResultError
		}
		if r.Status != want || (want == ResultError) != (r.Error != "") {
			t.Errorf("%s: %+v, want %s", msgs[i].ID, r, want)
		}
	}
	got := s.Messages(MessageFilter{To: "15550100001"})
	if len(got) != 3 || got[0].Type != "interactive" || got[1].Type != "reaction" || got[2].Type != "hsm" {
		t.Fatalf("recorded %+v", got)
	}

	err = s.InjectStatus(StatusInjection{ID: "i1", Status: "failed", Errors: json.RawMessage(`[{"code":470,"title":"Message failed to send because more than 24 hours have passed since the customer last replied to this number"}]`)})
	if err != nil {
		t.Fatal(err)
	}
	err = s.InjectStatus(StatusInjection{ID: "r1", Status: "sent",
		Conversation: json.RawMessage(`{"id":"c1","origin":{"type":"business_initiated"},"expiration_timestamp":1700086400}`),
		Pricing:      json.RawMessage(`{"billable":true,"pricing_model":"CBP","category":"business_initiated"}`)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.InjectStatus(StatusInjection{ID: "nope", Status: "deleted"}); !errors.Is(err, ErrUnknownMessage) {
		t.Errorf("status for an unknown message: %v", err)
	}
	want := map[string]string{
		"i1": `{"errors":[{"code":470,"title":"Message failed to send because more than 24 hours have passed since the customer last replied to this number"}]}`,
		"r1": `{"conversation":{"id":"c1","origin":{"type":"business_initiated"},"expiration_timestamp":1700086400},"pricing":{"billable":true,"pricing_model":"CBP","category":"business_initiated"}}`,
	}
	deadline := time.After(2 * time.Second)
	for len(want) > 0 {
		select {
		case e := <-c.events:
			if w, ok := want[e.MessageID]; ok && len(e.Payload) > 0 {
				if string(e.Payload) != w || e.Recipient != "15550100001" {
					t.Errorf("status %+v payload %s, want %s", e, e.Payload, w)
				}
				delete(want, e.MessageID)
			}
		case <-deadline:
			t.Fatalf("injected statuses not pushed: %v", want)
		}
	}
}
