package metaspec

import (
	"errors"
	"sort"
	"strconv"
	"strings"
)

// fix applies the known gaps' fixes (SOURCE.md) to the parsed description.
func fix(doc map[string]any, order []string) error {
	comps, _ := doc["components"].(map[string]any)
	schemas, _ := comps["schemas"].(map[string]any)
	if schemas == nil {
		return errors.New("metaspec: the description has no components.schemas")
	}
	if err := fixWebhookRefs(schemas, order); err != nil {
		return err
	}
	walk(doc, fixAllOf)
	walk(doc, fixDiscriminator)

	// biz_opaque_callback_data: on Meta's messages reference, echoed in the
	// message's status webhooks; the description has it on calls only.
	base, _ := schemas["BaseMessageProperties"].(map[string]any)
	props, _ := base["properties"].(map[string]any)
	if props == nil {
		return errors.New("metaspec: the description has no BaseMessageProperties.properties")
	}
	props["biz_opaque_callback_data"] = map[string]any{
		"type":        "string",
		"maxLength":   512,
		"description": "Echoed in this message's status webhooks (metaspec: from Meta's messages reference).",
	}

	if err := fixTemplatesAndLocation(schemas); err != nil {
		return err
	}

	// A read receipt is sent to the messages operation (the description's
	// own example "Send typing indicator and read receipt"), but its schema
	// has only messages with a type: a body with "status" is a receipt.
	msg, ok := schemas["Message"]
	if !ok {
		return errors.New("metaspec: the description has no Message schema")
	}
	schemas["MessageOfType"] = msg
	schemas["ReadReceipt"] = map[string]any{
		"type":                 "object",
		"additionalProperties": false,
		"required":             []any{"messaging_product", "status", "message_id"},
		"properties": map[string]any{
			"messaging_product": map[string]any{"type": "string", "enum": []any{"whatsapp"}},
			"status":            map[string]any{"type": "string", "enum": []any{"read"}},
			"message_id":        map[string]any{"type": "string", "minLength": 1},
			"typing_indicator": map[string]any{
				"type":                 "object",
				"additionalProperties": false,
				"required":             []any{"type"},
				"properties":           map[string]any{"type": map[string]any{"type": "string", "enum": []any{"text"}}},
			},
		},
	}
	schemas["Message"] = map[string]any{
		"if":   map[string]any{"type": "object", "required": []any{"status"}},
		"then": map[string]any{"$ref": "#/components/schemas/ReadReceipt"},
		"else": map[string]any{"$ref": "#/components/schemas/MessageOfType"},
	}
	return nil
}

// fixTemplatesAndLocation corrects three schemas that refuse the
// description's own examples (and what Meta's reference pages document):
//   - LanguageObject requires policy, which every template example omits
//     ("deterministic" is the only value and the default);
//   - a template button's index has the pattern ^[2-6, 11-14]$ (a character
//     class, not a range: it refuses the example's own '0'); the reference
//     gives 0 to 9, as a string or a number;
//   - a location's latitude and longitude are strings, but the reference and
//     the examples give decimal numbers.
func fixTemplatesAndLocation(schemas map[string]any) error {
	lang, _ := schemas["LanguageObject"].(map[string]any)
	if lang == nil {
		return errors.New("metaspec: the description has no LanguageObject")
	}
	lang["required"] = []any{"code"}
	index := func() map[string]any {
		return map[string]any{"type": []any{"string", "integer"}, "pattern": "^[0-9]$", "minimum": 0, "maximum": 9}
	}
	found := 0
	for _, name := range []string{"TemplateComponent", "ButtonComponent"} {
		walk(schemas[name], func(m map[string]any) {
			if props, ok := m["properties"].(map[string]any); ok && props["index"] != nil {
				props["index"] = index()
				found++
			}
		})
	}
	if found == 0 {
		return errors.New("metaspec: the description has no template button index")
	}
	loc, _ := schemas["LocationMessage"].(map[string]any)
	found = 0
	walk(loc, func(m map[string]any) {
		props, ok := m["properties"].(map[string]any)
		if !ok {
			return
		}
		for _, k := range []string{"latitude", "longitude"} {
			if p, ok := props[k].(map[string]any); ok {
				p["type"] = []any{"number", "string"}
				found++
			}
		}
	})
	if found != 2 {
		return errors.New("metaspec: the description's LocationMessage has no latitude and longitude")
	}
	return nil
}

// fixWebhookRefs: the file bundles several parts, renaming a part's schema
// X to X_1, X_2... when an earlier part already has an X, but the webhook
// part (WebhookPayload to the end of components.schemas) still refers to
// its own schemas by their first names: its IncomingMessage maps "text" to
// the outgoing TextMessage (which requires to and recipient_type), so every
// inbound message is refused. Within that part, a reference to X defined
// before it is pointed at the part's own renamed X_n.
func fixWebhookRefs(schemas map[string]any, order []string) error {
	start := -1
	for i, n := range order {
		if n == "WebhookPayload" {
			start = i
			break
		}
	}
	if start < 0 {
		return errors.New("metaspec: the description has no WebhookPayload schema")
	}
	part := map[string]bool{}
	for _, n := range order[start:] {
		part[n] = true
	}
	own := map[string]string{} // first name → the part's renamed schema
	for n := range part {
		if i := strings.LastIndexByte(n, '_'); i > 0 {
			if _, err := strconv.Atoi(n[i+1:]); err == nil && !part[n[:i]] {
				own[n[:i]] = n
			}
		}
	}
	const prefix = "#/components/schemas/"
	repoint := func(ref string) string {
		if name, ok := strings.CutPrefix(ref, prefix); ok {
			if to, ok := own[name]; ok {
				return prefix + to
			}
		}
		return ref
	}
	for n := range part {
		walk(schemas[n], func(m map[string]any) {
			if ref, ok := m["$ref"].(string); ok {
				m["$ref"] = repoint(ref)
			}
			if d, ok := m["discriminator"].(map[string]any); ok {
				if mp, ok := d["mapping"].(map[string]any); ok {
					for k, v := range mp {
						if s, ok := v.(string); ok {
							mp[k] = repoint(s)
						}
					}
				}
			}
		})
	}
	return nil
}

// walk calls f on every mapping of v, depth first (children before parents
// do not matter to the fixes: each looks at its own keys only).
func walk(v any, f func(map[string]any)) {
	switch t := v.(type) {
	case map[string]any:
		f(t)
		for _, e := range t {
			walk(e, f)
		}
	case []any:
		for _, e := range t {
			walk(e, f)
		}
	}
}

// fixAllOf: additionalProperties:false inside one allOf branch rejects every
// property of the other branches under JSON Schema; its authors meant the
// whole allOf to be closed: unevaluatedProperties:false on the parent.
func fixAllOf(m map[string]any) {
	branches, ok := m["allOf"].([]any)
	if !ok {
		return
	}
	closed := false
	for _, b := range branches {
		bm, ok := b.(map[string]any)
		if !ok {
			continue
		}
		if ap, ok := bm["additionalProperties"].(bool); ok && !ap {
			delete(bm, "additionalProperties")
			closed = true
		}
	}
	if closed {
		m["unevaluatedProperties"] = false
	}
}

// fixDiscriminator: a oneOf with an OpenAPI discriminator mapping is
// validated against the schema its discriminating property names; a plain
// oneOf would also count the looser branches (and fail when two match).
func fixDiscriminator(m map[string]any) {
	disc, ok := m["discriminator"].(map[string]any)
	if !ok {
		return
	}
	prop, _ := disc["propertyName"].(string)
	mapping, _ := disc["mapping"].(map[string]any)
	if prop == "" || len(mapping) == 0 || m["oneOf"] == nil {
		return
	}
	keys := make([]string, 0, len(mapping))
	for k := range mapping {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	enum := make([]any, len(keys))
	all := []any{map[string]any{
		"type":     "object",
		"required": []any{prop},
		"properties": map[string]any{
			prop: map[string]any{"enum": enum},
		},
	}}
	for i, k := range keys {
		enum[i] = k
		ref, _ := mapping[k].(string)
		all = append(all, map[string]any{
			"if":   map[string]any{"properties": map[string]any{prop: map[string]any{"const": k}}},
			"then": map[string]any{"$ref": ref},
		})
	}
	delete(m, "oneOf")
	if prev, ok := m["allOf"].([]any); ok {
		all = append(prev, all...)
	}
	m["allOf"] = all
}
