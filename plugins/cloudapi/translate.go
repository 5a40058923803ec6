package cloudapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Resolver answers what a translation needs from outside the message: the
// Cloud API's ids for what the On-Premises body names by ours.
type Resolver interface {
	// WAMID returns the wamid our message id was sent as, or "" when the
	// id is not one of ours (an inbound message's id is its wamid already).
	WAMID(ctx context.Context, id string) (string, error)
	// MediaID returns the Cloud API media id of our upload id (uploading
	// the file first if it never was). A *BadMessage error means the
	// message can never be sent (the file is gone).
	MediaID(ctx context.Context, id string) (string, error)
}

// BadMessage is a message that cannot be translated: it fails alone
// (the coreapp reports a failed status), it is never retried.
type BadMessage struct{ Reason string }

func (e *BadMessage) Error() string { return "message cannot be sent on the Cloud API: " + e.Reason }

func bad(format string, args ...any) error { return &BadMessage{Reason: fmt.Sprintf(format, args...)} }

// Translate turns an On-Premises POST /v1/messages body (as the coreapp
// validated and stored it) into the Cloud API's POST
// /{phone-number-id}/messages body, with biz_opaque_callback_data set to
// our id so the message's status webhooks name it. to is the recipient
// (its digits are sent). Fields the Cloud API does not have are dropped;
// what the gateway accepts but the Cloud API cannot take at all is a
// *BadMessage.
func Translate(ctx context.Context, id, to string, body []byte, r Resolver) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var in map[string]any
	if err := dec.Decode(&in); err != nil {
		return nil, bad("body is not a JSON object: %v", err)
	}
	typ, _ := in["type"].(string)
	if typ == "" {
		typ = "text"
	}
	out := map[string]any{
		"messaging_product":        "whatsapp",
		"recipient_type":           "individual",
		"to":                       digits(to),
		"biz_opaque_callback_data": id,
	}
	if out["to"] == "" {
		return nil, bad("recipient %q has no digits", to)
	}
	if c := obj(in["context"]); c != nil && typ != "reaction" {
		mid, _ := c["message_id"].(string)
		if mid == "" {
			return nil, bad("context without message_id")
		}
		w, err := wamidOf(ctx, r, mid)
		if err != nil {
			return nil, err
		}
		out["context"] = map[string]any{"message_id": w}
	}
	tr := translator{ctx: ctx, r: r}
	var err error
	switch typ {
	case "text":
		t := obj(in["text"])
		text := map[string]any{"body": t["body"]}
		if pv, ok := in["preview_url"].(bool); ok {
			text["preview_url"] = pv
		} else if pv, ok := t["preview_url"].(bool); ok {
			text["preview_url"] = pv
		}
		out["type"], out["text"] = "text", text
	case "image", "video":
		out["type"] = typ
		out[typ], err = tr.media(in[typ], "caption")
	case "document":
		out["type"] = typ
		out[typ], err = tr.media(in[typ], "caption", "filename")
	case "audio", "sticker":
		out["type"] = typ
		out[typ], err = tr.media(in[typ])
	case "location":
		out["type"], out["location"] = "location", location(obj(in["location"]))
	case "contacts":
		out["type"], out["contacts"] = "contacts", contacts(array(in["contacts"]))
	case "template":
		out["type"] = "template"
		out["template"], err = tr.template(obj(in["template"]))
	case "hsm":
		out["type"], out["template"] = "template", hsmTemplate(obj(in["hsm"]))
	case "interactive":
		out["type"] = "interactive"
		out["interactive"], err = tr.interactive(obj(in["interactive"]))
	case "reaction":
		rc := obj(in["reaction"])
		mid, _ := rc["message_id"].(string)
		var w string
		if w, err = wamidOf(ctx, r, mid); err == nil {
			emoji, _ := rc["emoji"].(string)
			out["type"], out["reaction"] = "reaction", map[string]any{"message_id": w, "emoji": emoji}
		}
	default:
		return nil, bad("message type %q has no Cloud API form", typ)
	}
	if err != nil {
		return nil, err
	}
	return json.Marshal(out)
}

// translator carries the resolver through the nested parts.
type translator struct {
	ctx context.Context
	r   Resolver
}

// media is a media object by the Cloud API's id (ours resolved, uploaded
// if need be) or by link, with the fields keep names when present. A
// media provider (credentials for a link) has no Cloud API form: Meta
// fetches the link itself, so the link must be reachable without them.
func (tr translator) media(v any, keep ...string) (map[string]any, error) {
	m := obj(v)
	if m == nil {
		return nil, bad("media object missing")
	}
	out := map[string]any{}
	switch id, link := str(m["id"]), str(m["link"]); {
	case id != "":
		mid, err := tr.r.MediaID(tr.ctx, id)
		if err != nil {
			return nil, err
		}
		out["id"] = mid
	case link != "":
		out["link"] = link
	default:
		return nil, bad("media object has neither id nor link")
	}
	for _, k := range keep {
		if s := str(m[k]); s != "" {
			out[k] = s
		}
	}
	return out, nil
}

// attachment is the media of a template parameter or an interactive
// header: no caption there (the Cloud API does not show one), a
// document's filename kept.
func (tr translator) attachment(kind string, v any) (map[string]any, error) {
	if kind == "document" {
		return tr.media(v, "filename")
	}
	return tr.media(v)
}

// template: the On-Premises namespace has no Cloud API counterpart (the
// template is found by name in the business account); the language is its
// code, under the one policy the Cloud API has (deterministic: a fallback
// policy is no longer served). Components pass as they are, button
// indexes as strings.
func (tr translator) template(t map[string]any) (map[string]any, error) {
	out := map[string]any{"name": t["name"], "language": language(obj(t["language"]))}
	cs := array(t["components"])
	if len(cs) == 0 {
		return out, nil
	}
	var comps []any
	for _, c := range cs {
		c := obj(c)
		oc := map[string]any{"type": c["type"]}
		if st := str(c["sub_type"]); st != "" {
			oc["sub_type"] = st
		}
		if ix, ok := c["index"]; ok {
			oc["index"] = indexString(ix)
		}
		if ps := array(c["parameters"]); ps != nil {
			params := make([]any, 0, len(ps))
			for _, p := range ps {
				op, err := tr.templateParam(obj(p))
				if err != nil {
					return nil, err
				}
				params = append(params, op)
			}
			oc["parameters"] = params
		}
		comps = append(comps, oc)
	}
	out["components"] = comps
	return out, nil
}

func (tr translator) templateParam(p map[string]any) (map[string]any, error) {
	pt := str(p["type"])
	out := map[string]any{"type": pt}
	switch pt {
	case "text", "payload":
		out[pt] = p[pt]
	case "currency":
		c := obj(p["currency"])
		out["currency"] = map[string]any{"fallback_value": c["fallback_value"], "code": c["code"], "amount_1000": c["amount_1000"]}
	case "date_time":
		out["date_time"] = map[string]any{"fallback_value": obj(p["date_time"])["fallback_value"]}
	case "image", "video", "document":
		m, err := tr.attachment(pt, p[pt])
		if err != nil {
			return nil, err
		}
		out[pt] = m
	default:
		return nil, bad("template parameter type %q has no Cloud API form", pt)
	}
	return out, nil
}

func language(l map[string]any) map[string]any {
	return map[string]any{"policy": "deterministic", "code": str(l["code"])}
}

// indexString writes a button index (the On-Premises API took a string or
// a number) as the Cloud API's string.
func indexString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

// hsmTemplate turns the legacy hsm (element_name and localizable_params)
// into a template whose body takes the params in order: a currency or
// date_time param keeps its kind, with the default as the fallback value
// (the Cloud API always shows the fallback of a date_time).
func hsmTemplate(h map[string]any) map[string]any {
	out := map[string]any{"name": h["element_name"], "language": language(obj(h["language"]))}
	lps := array(h["localizable_params"])
	if len(lps) == 0 {
		return out
	}
	params := make([]any, 0, len(lps))
	for _, lp := range lps {
		lp := obj(lp)
		def := str(lp["default"])
		switch {
		case obj(lp["currency"]) != nil:
			c := obj(lp["currency"])
			params = append(params, map[string]any{"type": "currency", "currency": map[string]any{
				"fallback_value": def, "code": strings.ToUpper(str(c["currency_code"])), "amount_1000": c["amount_1000"]}})
		case obj(lp["date_time"]) != nil:
			params = append(params, map[string]any{"type": "date_time", "date_time": map[string]any{"fallback_value": def}})
		default:
			params = append(params, map[string]any{"type": "text", "text": def})
		}
	}
	out["components"] = []any{map[string]any{"type": "body", "parameters": params}}
	return out
}

// location: the coordinates stay the numbers they were (exactly: decoded
// as json.Number), as Meta's reference pages give them.
func location(l map[string]any) map[string]any {
	out := map[string]any{"latitude": l["latitude"], "longitude": l["longitude"]}
	for _, k := range []string{"name", "address"} {
		if s := str(l[k]); s != "" {
			out[k] = s
		}
	}
	return out
}

// contacts copies the fields of each card that the Cloud API has. Its
// phone, email, url and address types are HOME or WORK: another type the
// On-Premises API let through (CELL, MAIN, ...) is left out, the value
// kept.
func contacts(cs []any) []any {
	out := make([]any, 0, len(cs))
	for _, c := range cs {
		c := obj(c)
		oc := map[string]any{}
		if n := pick(obj(c["name"]), "formatted_name", "first_name", "last_name", "middle_name", "prefix", "suffix"); n != nil {
			oc["name"] = n
		}
		if b := str(c["birthday"]); b != "" {
			oc["birthday"] = b
		}
		if o := pick(obj(c["org"]), "company", "department", "title"); o != nil {
			oc["org"] = o
		}
		lists := []struct {
			key, need string
			fields    []string
		}{
			{"phones", "phone", []string{"phone", "wa_id"}},
			{"emails", "email", []string{"email"}},
			{"urls", "url", []string{"url"}},
			{"addresses", "", []string{"street", "city", "state", "zip", "country", "country_code"}},
		}
		for _, l := range lists {
			var items []any
			for _, it := range array(c[l.key]) {
				it := obj(it)
				if l.need != "" && str(it[l.need]) == "" {
					continue // the Cloud API requires it
				}
				oi := pick(it, l.fields...)
				if oi == nil {
					continue
				}
				if t := strings.ToUpper(str(it["type"])); t == "HOME" || t == "WORK" {
					oi["type"] = t
				}
				items = append(items, oi)
			}
			if items != nil {
				oc[l.key] = items
			}
		}
		out = append(out, oc)
	}
	return out
}

// pick copies the string fields keys of m that are set; nil if none is.
func pick(m map[string]any, keys ...string) map[string]any {
	var out map[string]any
	for _, k := range keys {
		if s := str(m[k]); s != "" {
			if out == nil {
				out = map[string]any{}
			}
			out[k] = s
		}
	}
	return out
}

// interactive: the same object in both APIs; media in a header are
// resolved, everything else passes as is.
func (tr translator) interactive(in map[string]any) (map[string]any, error) {
	out := map[string]any{"type": in["type"], "action": in["action"]}
	for _, k := range []string{"body", "footer"} {
		if v := obj(in[k]); v != nil {
			out[k] = map[string]any{"text": v["text"]}
		}
	}
	if h := obj(in["header"]); h != nil {
		ht := str(h["type"])
		oh := map[string]any{"type": ht}
		switch ht {
		case "text":
			oh["text"] = h["text"]
		case "image", "video", "document":
			m, err := tr.attachment(ht, h[ht])
			if err != nil {
				return nil, err
			}
			oh[ht] = m
		default:
			return nil, bad("interactive header type %q has no Cloud API form", ht)
		}
		out["header"] = oh
	}
	return out, nil
}

// wamidOf is the wamid a reply or reaction names: ours translated, any
// other id (an inbound message's wamid) as it is.
func wamidOf(ctx context.Context, r Resolver, id string) (string, error) {
	if id == "" {
		return "", bad("message_id is empty")
	}
	w, err := r.WAMID(ctx, id)
	if err != nil {
		return "", fmt.Errorf("look up the wamid of %s: %w", id, err)
	}
	if w == "" {
		return id, nil
	}
	return w, nil
}

// IsBadMessage reports whether err means the message can never be sent.
func IsBadMessage(err error) bool {
	var b *BadMessage
	return errors.As(err, &b)
}

func digits(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func obj(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func array(v any) []any {
	a, _ := v.([]any)
	return a
}

func str(v any) string {
	s, _ := v.(string)
	return s
}
