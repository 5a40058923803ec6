package accept

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/openapi"
	"github.com/multiconnect/multiconnect/internal/shard"
)

// outMessage is a validated POST /v1/messages request.
type outMessage struct {
	To       string
	Type     string
	Body     []byte   // the request, compacted: what the network receives
	MediaIDs []string // uploaded media the message refers to by id
	// MediaProviders names the media providers (settings) whose
	// credentials fetch the message's links, in order, without repeats:
	// the body keeps each media object's provider field as sent, for
	// whatever fetches the links.
	MediaProviders []string
	// request is the request decoded, its type made explicit: what
	// bodyHash encodes.
	request map[string]any
}

// badRequest is a refusal with the original's code; nothing is stored.
type badRequest struct {
	code    int
	details string
}

func (e *badRequest) Error() string { return e.details }

func invalid(format string, args ...any) *badRequest {
	return &badRequest{apierror.ParameterInvalid, fmt.Sprintf(format, args...)}
}

// messageSchema is components.schemas.Message of the API's OpenAPI
// document, compiled once: every POST /v1/messages is checked against it.
var messageSchema = sync.OnceValues(func() (*jsonschema.Schema, error) { return openapi.Schema("Message") })

// parseMessage validates a message request as the original did: the body
// must be a JSON object (else 1025); the OpenAPI document's Message schema
// decides the rest (a missing required field 1008, a field of the wrong
// type or value 1009), and Go checks only what a schema cannot say (see
// checkInteractive). Media ids are collected for the caller to look up.
func parseMessage(body []byte) (*outMessage, *badRequest) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber() // the data model jsonschema validates, numbers kept exact
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
	if !conformsAsText(m) {
		schema, err := messageSchema()
		if err != nil {
			return nil, &badRequest{apierror.GenericError, "the message schema does not compile: " + err.Error()}
		}
		if bad := openapi.ValidateValue(schema, doc); bad != nil {
			return nil, &badRequest{bad.Code, bad.Details}
		}
	}
	// The schema guarantees these are strings when present.
	to, _ := m["to"].(string)
	typ, _ := m["type"].(string)
	if typ == "" {
		typ = "text" // the original's default
	}
	msg := &outMessage{To: to, Type: typ}
	if typ == "interactive" {
		if bad := checkInteractive(m["interactive"].(map[string]any)); bad != nil {
			return nil, bad
		}
	}
	msg.MediaIDs, msg.MediaProviders = mediaRefs(typ, m)
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
	msg.request = m
	return msg, nil
}

// bodyHash is what an idempotency key is bound to: a SHA-256, in hex, of
// the request decoded and encoded again (keys sorted, no insignificant
// whitespace, the type made explicit) with to as its digits, so a retry
// that writes the recipient or the JSON differently is still the same
// message, and a different message under a used key is told apart. Only a
// request with a key needs it.
func (msg *outMessage) bodyHash() (string, error) {
	canon := maps.Clone(msg.request)
	canon["to"] = string(shard.Digits(msg.To))
	b, err := json.Marshal(canon)
	if err != nil {
		return "", fmt.Errorf("encode the message again: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// Limits of interactive messages that span sections, which a JSON Schema
// cannot count (the original's, as its reference documents them).
const (
	maxListRows     = 10 // rows in all sections of a list
	maxProductItems = 30 // items in all sections of a product list
)

// checkInteractive checks what the Message schema cannot: totals across a
// list's or product list's sections and ids and titles that must be unique
// within the message. The schema has already checked the shape.
func checkInteractive(in map[string]any) *badRequest {
	action, _ := in["action"].(map[string]any)
	switch in["type"] {
	case "list":
		rows, ids := 0, map[string]bool{}
		for i, s := range array(action["sections"]) {
			for j, r := range array(obj(s)["rows"]) {
				rows++
				id, _ := obj(r)["id"].(string)
				if ids[id] {
					return invalid("/interactive/action/sections/%d/rows/%d/id: %q is used twice; row ids must be unique", i, j, id)
				}
				ids[id] = true
			}
		}
		if rows > maxListRows {
			return invalid("/interactive/action/sections: %d rows in all; a list has at most %d", rows, maxListRows)
		}
	case "button":
		ids, titles := map[string]bool{}, map[string]bool{}
		for i, b := range array(action["buttons"]) {
			reply := obj(obj(b)["reply"])
			id, _ := reply["id"].(string)
			title, _ := reply["title"].(string)
			if ids[id] {
				return invalid("/interactive/action/buttons/%d/reply/id: %q is used twice; button ids must be unique", i, id)
			}
			if titles[title] {
				return invalid("/interactive/action/buttons/%d/reply/title: %q is used twice; button titles must be unique", i, title)
			}
			ids[id], titles[title] = true, true
		}
	case "product_list":
		items := 0
		for _, s := range array(action["sections"]) {
			items += len(array(obj(s)["product_items"]))
		}
		if items > maxProductItems {
			return invalid("/interactive/action/sections: %d product items in all; a product list has at most %d", items, maxProductItems)
		}
	}
	return nil
}

// mediaRefs returns the uploads a valid message names by id and the media
// providers its links name, from every media object a message can hold:
// its own, a template's media parameters, an interactive message's header.
func mediaRefs(typ string, m map[string]any) (ids, providers []string) {
	add := func(media any) {
		if id, ok := obj(media)["id"].(string); ok && id != "" {
			ids = append(ids, id)
		}
		if name, ok := obj(obj(media)["provider"])["name"].(string); ok && !slices.Contains(providers, name) {
			providers = append(providers, name)
		}
	}
	switch typ {
	case "image", "audio", "video", "document", "sticker":
		add(m[typ])
	case "template":
		for _, c := range array(obj(m["template"])["components"]) {
			for _, p := range array(obj(c)["parameters"]) {
				p := obj(p)
				if pt, _ := p["type"].(string); pt == "image" || pt == "document" || pt == "video" {
					add(p[pt])
				}
			}
		}
	case "interactive":
		h := obj(obj(m["interactive"])["header"])
		if ht, _ := h["type"].(string); ht == "image" || ht == "document" || ht == "video" {
			add(h[ht])
		}
	}
	return ids, providers
}

// obj and array read a decoded JSON value as an object or array; anything
// else reads as empty (the schema has checked the shape already).
func obj(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func array(v any) []any {
	a, _ := v.([]any)
	return a
}
