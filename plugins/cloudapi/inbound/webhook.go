package inbound

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/multiconnect/multiconnect/internal/shard"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Payload is Meta's webhook body (WebhookPayload in Meta's description):
// entries of changes, each change's value holding messages, statuses,
// contacts and errors. Message objects are kept raw: most of their type
// objects pass through to the On-Premises document unchanged.
type Payload struct {
	Object string `json:"object"`
	Entry  []struct {
		ID      string `json:"id"`
		Changes []struct {
			Field string `json:"field"`
			Value Value  `json:"value"`
		} `json:"changes"`
	} `json:"entry"`
}

// Value is one change's value.
type Value struct {
	MessagingProduct string `json:"messaging_product"`
	Metadata         struct {
		DisplayPhoneNumber string `json:"display_phone_number"`
		PhoneNumberID      string `json:"phone_number_id"`
	} `json:"metadata"`
	Contacts []struct {
		Profile struct {
			Name string `json:"name"`
		} `json:"profile"`
		WaID string `json:"wa_id"`
	} `json:"contacts"`
	Messages []map[string]json.RawMessage `json:"messages"`
	Statuses []Status                     `json:"statuses"`
	Errors   []CloudError                 `json:"errors"`
}

// Status is one status of a message the business sent.
type Status struct {
	ID          string `json:"id"`
	Status      string `json:"status"`
	Timestamp   string `json:"timestamp"`
	RecipientID string `json:"recipient_id"`
	// BizOpaqueCallbackData is what the send carried: the plugin puts our
	// message id there.
	BizOpaqueCallbackData string `json:"biz_opaque_callback_data"`
	Conversation          *struct {
		ID                  string          `json:"id"`
		ExpirationTimestamp json.RawMessage `json:"expiration_timestamp"`
		Origin              *struct {
			Type string `json:"type"`
		} `json:"origin"`
	} `json:"conversation"`
	Pricing *struct {
		Billable     bool   `json:"billable"`
		PricingModel string `json:"pricing_model"`
		Category     string `json:"category"`
	} `json:"pricing"`
	Errors []CloudError `json:"errors"`
}

// ErrStale refuses a webhook whose every event is older than the maximum
// age: a replay of a captured request, not one of Meta's retries.
var ErrStale = errors.New("cloudapi webhook: every event is older than the maximum age")

// Parse decodes a webhook body.
func Parse(body []byte) (*Payload, error) {
	var p Payload
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("cloudapi webhook: body is not a webhook payload: %w", err)
	}
	return &p, nil
}

// Lookup finds our message id for a wamid (the send records of
// cloudapi_messages); ok is false when no send of ours has that wamid.
type Lookup func(ctx context.Context, wamid string) (id string, ok bool, err error)

// LookupIn reads cloudapi_messages in db.
func LookupIn(db *sql.DB) Lookup {
	return func(ctx context.Context, wamid string) (string, bool, error) {
		var id string
		err := db.QueryRowContext(ctx, `SELECT id FROM cloudapi_messages WHERE wamid = ?`, wamid).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return "", false, nil
		}
		if err != nil {
			return "", false, fmt.Errorf("look up wamid %s: %w", wamid, err)
		}
		return id, true, nil
	}
}

// Translation is what a webhook carries, as records to store.
type Translation struct {
	Records []Record
	// Skipped says why events were left out (not for this number, no
	// sender, no timestamp...): logged, acknowledged, never stored.
	Skipped []string
	// Errors are the change-level errors Meta reported (no event carries
	// them): logged.
	Errors []CloudError
}

// Translate turns p into transport Events in the order Meta sent them.
// phoneNumberID, when set, leaves out changes for another number of the
// same app. lookup maps wamids to our message ids (statuses without
// biz_opaque_callback_data, replies' context and reactions).
func Translate(ctx context.Context, p *Payload, phoneNumberID string, lookup Lookup) (*Translation, error) {
	t := &Translation{}
	for _, en := range p.Entry {
		for _, ch := range en.Changes {
			v := ch.Value
			if ch.Field != "messages" {
				t.Skipped = append(t.Skipped, "field "+ch.Field+" is not messages")
				continue
			}
			if phoneNumberID != "" && v.Metadata.PhoneNumberID != phoneNumberID {
				t.Skipped = append(t.Skipped, fmt.Sprintf("%d messages and %d statuses of phone number id %q, not this cluster's",
					len(v.Messages), len(v.Statuses), v.Metadata.PhoneNumberID))
				continue
			}
			t.Errors = append(t.Errors, v.Errors...)
			for _, m := range v.Messages {
				if err := t.add(message(ctx, v, m, lookup)); err != nil {
					return nil, err
				}
			}
			for _, s := range v.Statuses {
				if err := t.add(status(ctx, s, lookup)); err != nil {
					return nil, err
				}
			}
		}
	}
	return t, nil
}

// add keeps a translated event, or why it was left out.
func (t *Translation) add(r Record, why string, err error) error {
	switch {
	case err != nil:
		return err
	case why != "":
		t.Skipped = append(t.Skipped, why)
	default:
		t.Records = append(t.Records, r)
	}
	return nil
}

// LeaveOut removes from t the statuses want declines (by their status,
// lowercased) and returns how many it removed. The gateway calls it with
// the cluster's webhook settings after CheckFresh (a replayed webhook is
// refused whatever it carries): a status no webhook wants (every status
// with no webhook set; "sent" unless sent_status asks for it) would be
// stored, read by the plugin, carried to the coreapp and acknowledged only
// for the coreapp to drop it (events.Writer applies the same rule); left
// out here it costs no row and no event.
func (t *Translation) LeaveOut(want func(status string) bool) (removed int) {
	kept := t.Records[:0]
	for _, r := range t.Records {
		if r.Event.Kind == transport.EventStatus && !want(r.Event.Status) {
			removed++
			continue
		}
		kept = append(kept, r)
	}
	t.Records = kept
	return removed
}

// CheckFresh refuses (ErrStale) records whose newest timestamp is more than
// maxAge before now. Meta retries an unacknowledged webhook for up to 7
// days with the event's own timestamps, so a maxAge above that accepts
// every retry and refuses a request captured and replayed later, after its
// rows may have been collected (which would store it twice). A webhook with
// no event (another field, errors only) is accepted and stores nothing:
// replaying it does nothing either.
func CheckFresh(recs []Record, now time.Time, maxAge time.Duration) error {
	if len(recs) == 0 {
		return nil
	}
	var newest int64
	for _, r := range recs {
		newest = max(newest, r.Event.Timestamp)
	}
	if time.Unix(newest, 0).Before(now.Add(-maxAge)) {
		return fmt.Errorf("%w (%s): the newest is from %s", ErrStale, maxAge, time.Unix(newest, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

// ByShard groups records by the shard of their contact among shards.
func ByShard(recs []Record, shards int) (map[int][]Record, error) {
	out := map[int][]Record{}
	for _, r := range recs {
		s, err := shard.For(r.Event.Recipient, shards)
		if err != nil {
			return nil, err
		}
		out[s] = append(out[s], r)
	}
	return out, nil
}

// message translates one inbound message into the On-Premises inbound
// message document: {"from", "id", "timestamp", "type", <type object>},
// with the sender's profile name as "profile" (the coreapp moves it into
// the callback's contacts, as the original's webhook had it).
func message(ctx context.Context, v Value, m map[string]json.RawMessage, lookup Lookup) (Record, string, error) {
	var from, id, ts, typ string
	for k, dst := range map[string]*string{"from": &from, "id": &id, "timestamp": &ts, "type": &typ} {
		if raw, ok := m[k]; ok {
			if err := json.Unmarshal(raw, dst); err != nil {
				return Record{}, fmt.Sprintf("a message's %s is not a string", k), nil
			}
		}
	}
	digits := string(shard.Digits(from))
	unix, err := strconv.ParseInt(ts, 10, 64)
	switch {
	case id == "":
		return Record{}, "a message without id", nil
	case digits == "":
		return Record{}, "message " + id + " has no sender", nil
	case err != nil:
		return Record{}, "message " + id + " has no timestamp", nil
	}
	doc := map[string]any{}
	for k, raw := range m {
		doc[k] = raw
	}
	doc["from"], doc["id"], doc["timestamp"] = digits, id, ts
	switch typ {
	case "audio":
		// The original told voice notes apart by type: voice.
		var a map[string]any
		if json.Unmarshal(m["audio"], &a) == nil && a["voice"] == true {
			delete(a, "voice")
			delete(doc, "audio")
			typ, doc["voice"] = "voice", a
		}
	case "unsupported", "unknown":
		// The original's type for a message it could not show.
		doc["errors"] = []transport.StatusError{{Code: 501, Title: "Unknown message type", Details: "Cloud API type " + typ}}
		typ = "unknown"
	case "system":
		var s map[string]any
		if json.Unmarshal(m["system"], &s) == nil {
			if s["type"] == "user_changed_number" {
				if w, ok := s["wa_id"]; ok {
					s["new_wa_id"] = w
					delete(s, "wa_id")
				}
			}
			s["customer"] = digits
			doc["system"] = s
		}
	case "reaction":
		var r map[string]any
		if json.Unmarshal(m["reaction"], &r) == nil {
			if w, _ := r["message_id"].(string); w != "" {
				if ours, err := ourID(ctx, lookup, w); err != nil {
					return Record{}, "", err
				} else {
					r["message_id"] = ours
				}
			}
			doc["reaction"] = r
		}
	}
	doc["type"] = typ
	if raw, ok := m["context"]; ok {
		var c map[string]any
		if json.Unmarshal(raw, &c) == nil {
			if w, _ := c["id"].(string); w != "" {
				ours, err := ourID(ctx, lookup, w)
				if err != nil {
					return Record{}, "", err
				}
				c["id"] = ours
			}
			doc["context"] = c
		}
	}
	for _, c := range v.Contacts {
		if c.WaID == digits || len(v.Contacts) == 1 {
			doc["profile"] = map[string]string{"name": c.Profile.Name}
			break
		}
	}
	payload, err := json.Marshal(doc)
	if err != nil {
		return Record{}, "", fmt.Errorf("encode message %s: %w", id, err)
	}
	return Record{
		Event: transport.Event{Kind: transport.EventInbound, MessageID: id, Recipient: digits, Timestamp: unix, Payload: payload},
		// The wamid is the network's id of the message: Meta's retries
		// carry it again.
		DedupeKey: id,
	}, "", nil
}

// ourID is our message id for a wamid, or the wamid itself when no send of
// ours has it (a message sent from another client of the number).
func ourID(ctx context.Context, lookup Lookup, wamid string) (string, error) {
	if lookup == nil {
		return wamid, nil
	}
	id, ok, err := lookup(ctx, wamid)
	if err != nil || !ok {
		return wamid, err
	}
	return id, nil
}

// status translates one status.
func status(ctx context.Context, s Status, lookup Lookup) (Record, string, error) {
	digits := string(shard.Digits(s.RecipientID))
	unix, err := strconv.ParseInt(s.Timestamp, 10, 64)
	switch {
	case s.ID == "" || s.Status == "":
		return Record{}, "a status without id or status", nil
	case digits == "":
		return Record{}, "status of " + s.ID + " has no recipient", nil
	case err != nil:
		return Record{}, "status of " + s.ID + " has no timestamp", nil
	}
	st := strings.ToLower(s.Status)
	id := s.BizOpaqueCallbackData
	if id == "" {
		if id, err = ourID(ctx, lookup, s.ID); err != nil {
			return Record{}, "", err
		}
	}
	var d transport.StatusDetails
	if c := s.Conversation; c != nil && c.ID != "" {
		d.Conversation = &transport.Conversation{ID: c.ID, ExpirationTimestamp: looseInt(c.ExpirationTimestamp)}
		if c.Origin != nil && c.Origin.Type != "" {
			d.Conversation.Origin = &transport.ConversationOrigin{Type: onPremCategory(c.Origin.Type)}
		}
	}
	if p := s.Pricing; p != nil {
		d.Pricing = &transport.Pricing{Billable: p.Billable, PricingModel: p.PricingModel, Category: onPremCategory(p.Category)}
	}
	for _, e := range s.Errors {
		d.Errors = append(d.Errors, OnPremError(e))
	}
	var payload []byte
	if d.Conversation != nil || d.Pricing != nil || len(d.Errors) > 0 {
		if payload, err = json.Marshal(d); err != nil {
			return Record{}, "", fmt.Errorf("encode status of %s: %w", s.ID, err)
		}
	}
	return Record{
		Event: transport.Event{Kind: transport.EventStatus, MessageID: id, Status: st, Recipient: digits, Timestamp: unix, Payload: payload},
		// One row per (message, status): Meta's retries of it are one.
		DedupeKey: s.ID + ":" + st,
	}, "", nil
}

// onPremCategory maps a Cloud conversation or pricing category to the
// original's: service conversations were opened by the user; marketing,
// utility and authentication ones by the business; referral_conversion
// (free entry points) is the same in both.
func onPremCategory(c string) string {
	switch {
	case c == "service" || c == "user_initiated":
		return "user_initiated"
	case c == "referral_conversion" || c == "free_entry_point":
		return "referral_conversion"
	case c == "":
		return ""
	}
	return "business_initiated"
}

// looseInt reads a number sent as a JSON number or string; 0 when neither.
func looseInt(raw json.RawMessage) int64 {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		n, _ := strconv.ParseInt(s, 10, 64)
		return n
	}
	var n int64
	_ = json.Unmarshal(raw, &n)
	return n
}
