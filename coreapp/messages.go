package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/shard"
)

// maxTextBody is the original's limit on a text message's body, in characters.
const maxTextBody = 4096

// maxCaption bounds a media caption, as the original did (1024 characters).
const maxCaption = 1024

// maxRecipient bounds `to` (the gateway refuses longer ones too).
const maxRecipient = 64

// messageTypes are the types POST /v1/messages accepts.
var messageTypes = map[string]bool{
	"text": true, "template": true, "image": true, "audio": true, "video": true,
	"document": true, "sticker": true, "location": true, "contacts": true,
}

// outMessage is a validated POST /v1/messages request.
type outMessage struct {
	To       string
	Type     string
	Body     []byte   // the request, compacted: what the network receives
	BodyHash [32]byte // SHA-256 of the canonical request, see parseMessage
	MediaIDs []string // uploaded media the message refers to by id
}

// badRequest is a refusal with the original's code; nothing is stored.
type badRequest struct {
	code    int
	details string
}

func (e *badRequest) Error() string { return e.details }

func missing(path string) *badRequest {
	return &badRequest{apierror.ParameterMissing, fmt.Sprintf("%s is required", path)}
}

func invalid(format string, args ...any) *badRequest {
	return &badRequest{apierror.ParameterInvalid, fmt.Sprintf(format, args...)}
}

// parseMessage validates a message request as the original did: the body
// must be a JSON object; a missing required field is 1008, a field of the
// wrong type or value 1009, a body that is not a JSON object 1025.
func parseMessage(body []byte) (*outMessage, *badRequest) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, &badRequest{apierror.RequestNotValid, "the request body is not valid JSON: " + err.Error()}
	}
	if dec.More() {
		return nil, &badRequest{apierror.RequestNotValid, "the request body has data after the JSON object"}
	}
	m, ok := doc.(map[string]any)
	if !ok {
		return nil, &badRequest{apierror.RequestNotValid, "the request body must be a JSON object"}
	}
	o := obj{m: m}
	to, err := o.str("to", true)
	if err != nil {
		return nil, err
	}
	if len(to) > maxRecipient {
		return nil, invalid("to is longer than %d characters", maxRecipient)
	}
	if len(shard.Digits(to)) == 0 {
		return nil, invalid("to must be a phone number or WhatsApp ID; %q has no digits", to)
	}
	if rt, err := o.str("recipient_type", false); err != nil {
		return nil, err
	} else if rt != "" && rt != "individual" {
		return nil, invalid("recipient_type must be \"individual\"")
	}
	typ, err := o.str("type", false)
	if err != nil {
		return nil, err
	}
	if typ == "" {
		typ = "text" // the original's default
	}
	if !messageTypes[typ] {
		return nil, invalid("type %q is not one of text, template, image, audio, video, document, sticker, location, contacts", typ)
	}
	if _, present := m["preview_url"]; present {
		if typ != "text" {
			return nil, invalid("preview_url applies to text messages only")
		}
		if _, err := o.boolean("preview_url"); err != nil {
			return nil, err
		}
	}
	msg := &outMessage{To: to, Type: typ}
	switch typ {
	case "text":
		err = checkText(o)
	case "template":
		err = checkTemplate(o, msg)
	case "image", "audio", "video", "document", "sticker":
		var media obj
		if media, err = o.object(typ, true); err == nil {
			err = checkMedia(media, typ, msg)
		}
	case "location":
		err = checkLocation(o)
	case "contacts":
		err = checkContacts(o)
	}
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if cerr := json.Compact(&buf, body); cerr != nil {
		return nil, &badRequest{apierror.RequestNotValid, "the request body is not valid JSON"}
	}
	msg.Body = buf.Bytes()
	if _, present := m["type"]; !present {
		// Store the type the network must see, not an implied one.
		m["type"] = typ
		b, _ := json.Marshal(m)
		msg.Body = b
	}
	// An idempotency key is bound to this hash: the request decoded and
	// encoded again (keys sorted, no insignificant whitespace, the type
	// made explicit) with to as its digits, so a retry that writes the
	// recipient or the JSON differently is still the same message, and a
	// different message under a used key is told apart.
	m["to"] = string(shard.Digits(to))
	canon, err2 := json.Marshal(m)
	if err2 != nil {
		return nil, &badRequest{apierror.RequestNotValid, "the request body is not valid JSON"}
	}
	msg.BodyHash = sha256.Sum256(canon)
	return msg, nil
}

func checkText(o obj) *badRequest {
	t, err := o.object("text", true)
	if err != nil {
		return err
	}
	body, err := t.str("body", true)
	if err != nil {
		return err
	}
	if strings.TrimSpace(body) == "" {
		return invalid("text.body must not be empty")
	}
	if n := utf8.RuneCountInString(body); n > maxTextBody {
		return invalid("text.body is %d characters long; the limit is %d", n, maxTextBody)
	}
	return nil
}

func checkTemplate(o obj, msg *outMessage) *badRequest {
	t, err := o.object("template", true)
	if err != nil {
		return err
	}
	for _, f := range []string{"namespace", "name"} {
		v, err := t.str(f, true)
		if err != nil {
			return err
		}
		if v == "" {
			return invalid("%s must not be empty", t.path(f))
		}
	}
	lang, err := t.object("language", true)
	if err != nil {
		return err
	}
	code, err := lang.str("code", true)
	if err != nil {
		return err
	}
	if code == "" {
		return invalid("%s must not be empty", lang.path("code"))
	}
	if p, err := lang.str("policy", false); err != nil {
		return err
	} else if p != "" && p != "deterministic" && p != "fallback" {
		return invalid("%s must be \"deterministic\" or \"fallback\"", lang.path("policy"))
	}
	comps, err := t.array("components", false)
	if err != nil {
		return err
	}
	for i := range comps {
		c, err := t.elem("components", comps, i)
		if err != nil {
			return err
		}
		ct, err := c.str("type", true)
		if err != nil {
			return err
		}
		switch ct {
		case "header", "body":
		case "button":
			st, err := c.str("sub_type", true)
			if err != nil {
				return err
			}
			if st != "quick_reply" && st != "url" {
				return invalid("%s must be \"quick_reply\" or \"url\"", c.path("sub_type"))
			}
			if _, present := c.m["index"]; !present {
				return missing(c.path("index"))
			}
		default:
			return invalid("%s must be header, body or button", c.path("type"))
		}
		params, err := c.array("parameters", false)
		if err != nil {
			return err
		}
		for j := range params {
			p, err := c.elem("parameters", params, j)
			if err != nil {
				return err
			}
			if err := checkParameter(p, msg); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkParameter(p obj, msg *outMessage) *badRequest {
	pt, err := p.str("type", true)
	if err != nil {
		return err
	}
	switch pt {
	case "text":
		_, err = p.str("text", true)
	case "payload":
		_, err = p.str("payload", true)
	case "currency":
		var cur obj
		if cur, err = p.object("currency", true); err == nil {
			if _, err = cur.str("fallback_value", true); err == nil {
				if _, err = cur.str("code", true); err == nil {
					_, err = cur.number("amount_1000", true)
				}
			}
		}
	case "date_time":
		var dt obj
		if dt, err = p.object("date_time", true); err == nil {
			_, err = dt.str("fallback_value", true)
		}
	case "image", "document", "video":
		var media obj
		if media, err = p.object(pt, true); err == nil {
			err = checkMedia(media, pt, msg)
		}
	default:
		return invalid("%s must be text, currency, date_time, image, document, video or payload", p.path("type"))
	}
	return err
}

// checkMedia checks a media object: exactly one of id (an upload) or link
// (an http(s) URL), and the fields the type allows.
func checkMedia(m obj, typ string, msg *outMessage) *badRequest {
	id, err := m.str("id", false)
	if err != nil {
		return err
	}
	link, err := m.str("link", false)
	if err != nil {
		return err
	}
	switch {
	case id == "" && link == "":
		return missing(m.path("id") + " or " + m.path("link"))
	case id != "" && link != "":
		return invalid("%s: give id or link, not both", m.prefix)
	case link != "":
		u, perr := url.Parse(link)
		if perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return invalid("%s must be an http or https URL", m.path("link"))
		}
	default:
		msg.MediaIDs = append(msg.MediaIDs, id)
	}
	if c, err := m.str("caption", false); err != nil {
		return err
	} else if c != "" {
		if typ == "audio" || typ == "sticker" {
			return invalid("%s: %s messages have no caption", m.path("caption"), typ)
		}
		if utf8.RuneCountInString(c) > maxCaption {
			return invalid("%s is longer than %d characters", m.path("caption"), maxCaption)
		}
	}
	if _, present := m.m["filename"]; present {
		if typ != "document" {
			return invalid("%s applies to documents only", m.path("filename"))
		}
		if _, err := m.str("filename", false); err != nil {
			return err
		}
	}
	return nil
}

func checkLocation(o obj) *badRequest {
	l, err := o.object("location", true)
	if err != nil {
		return err
	}
	lat, err := l.number("latitude", true)
	if err != nil {
		return err
	}
	lon, err := l.number("longitude", true)
	if err != nil {
		return err
	}
	if lat < -90 || lat > 90 {
		return invalid("%s must be between -90 and 90", l.path("latitude"))
	}
	if lon < -180 || lon > 180 {
		return invalid("%s must be between -180 and 180", l.path("longitude"))
	}
	for _, f := range []string{"name", "address"} {
		if _, err := l.str(f, false); err != nil {
			return err
		}
	}
	return nil
}

func checkContacts(o obj) *badRequest {
	cs, err := o.array("contacts", true)
	if err != nil {
		return err
	}
	if len(cs) == 0 {
		return invalid("contacts must not be empty")
	}
	for i := range cs {
		c, err := o.elem("contacts", cs, i)
		if err != nil {
			return err
		}
		name, err := c.object("name", true)
		if err != nil {
			return err
		}
		fn, err := name.str("formatted_name", true)
		if err != nil {
			return err
		}
		if fn == "" {
			return invalid("%s must not be empty", name.path("formatted_name"))
		}
		for _, f := range []string{"phones", "emails", "urls", "addresses"} {
			items, err := c.array(f, false)
			if err != nil {
				return err
			}
			for j := range items {
				if _, err := c.elem(f, items, j); err != nil {
					return err
				}
			}
		}
		if _, err := c.object("org", false); err != nil {
			return err
		}
		if b, err := c.str("birthday", false); err != nil {
			return err
		} else if b != "" {
			if _, perr := time.Parse("2006-01-02", b); perr != nil {
				return invalid("%s must be YYYY-MM-DD", c.path("birthday"))
			}
		}
	}
	return nil
}

// obj is a JSON object being validated; prefix is its path for messages.
type obj struct {
	prefix string
	m      map[string]any
}

func (o obj) path(f string) string {
	if o.prefix == "" {
		return f
	}
	return o.prefix + "." + f
}

func (o obj) str(f string, required bool) (string, *badRequest) {
	v, ok := o.m[f]
	if !ok || v == nil {
		if required {
			return "", missing(o.path(f))
		}
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", invalid("%s must be a string", o.path(f))
	}
	return s, nil
}

func (o obj) boolean(f string) (bool, *badRequest) {
	b, ok := o.m[f].(bool)
	if !ok {
		return false, invalid("%s must be true or false", o.path(f))
	}
	return b, nil
}

func (o obj) number(f string, required bool) (float64, *badRequest) {
	v, ok := o.m[f]
	if !ok || v == nil {
		if required {
			return 0, missing(o.path(f))
		}
		return 0, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, invalid("%s must be a number", o.path(f))
	}
	x, err := n.Float64()
	if err != nil {
		return 0, invalid("%s is not a usable number", o.path(f))
	}
	return x, nil
}

func (o obj) object(f string, required bool) (obj, *badRequest) {
	v, ok := o.m[f]
	if !ok || v == nil {
		if required {
			return obj{}, missing(o.path(f))
		}
		return obj{prefix: o.path(f), m: map[string]any{}}, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return obj{}, invalid("%s must be an object", o.path(f))
	}
	return obj{prefix: o.path(f), m: m}, nil
}

func (o obj) array(f string, required bool) ([]any, *badRequest) {
	v, ok := o.m[f]
	if !ok || v == nil {
		if required {
			return nil, missing(o.path(f))
		}
		return nil, nil
	}
	a, ok := v.([]any)
	if !ok {
		return nil, invalid("%s must be an array", o.path(f))
	}
	return a, nil
}

// elem returns element i of the array field f as an object.
func (o obj) elem(f string, a []any, i int) (obj, *badRequest) {
	p := fmt.Sprintf("%s[%d]", o.path(f), i)
	m, ok := a[i].(map[string]any)
	if !ok {
		return obj{}, invalid("%s must be an object", p)
	}
	return obj{prefix: p, m: m}, nil
}
