package accept

import (
	"unicode/utf8"
)

// conformsAsText reports whether m, a decoded POST /v1/messages body, is a
// plain text message that the Message schema of the OpenAPI document
// certainly accepts. It is a shortcut past the generic validator for the
// most common message (the generic validation is most of the cost of
// parsing one), never a second opinion: false means "ask the schema",
// which then accepts or refuses with its own error, so every refusal and
// its details still come from the document.
//
// It encodes the parts of components.schemas Message, MessageText and
// MessageContext that a text message meets. TestTextShortcutMatchesSchema
// fails if those schemas change (update this function with them) and
// checks, over variants of every constraint, that it never accepts what
// the schema refuses.
func conformsAsText(m map[string]any) bool {
	for k, v := range m {
		switch k {
		case "to":
			// type string, minLength 1, maxLength 64, pattern "[0-9]".
			s, ok := v.(string)
			if !ok || !hasDigit(s) || utf8.RuneCountInString(s) > 64 {
				return false
			}
		case "recipient_type":
			if v != "individual" {
				return false
			}
		case "type":
			if v != "text" {
				return false
			}
		case "preview_url":
			// Allowed with type text only (dependentSchemas).
			if _, ok := v.(bool); !ok {
				return false
			}
		case "context":
			// MessageContext: message_id, a string of 1 to 256 characters.
			id, ok := obj(v)["message_id"].(string)
			if !ok || id == "" || utf8.RuneCountInString(id) > 256 {
				return false
			}
		case "text":
			// MessageText: body, a string of 1 to 4096 characters
			// matching "\S".
			body, ok := obj(v)["body"].(string)
			if !ok || !hasNonSpace(body) || utf8.RuneCountInString(body) > 4096 {
				return false
			}
		case "template", "hsm", "image", "audio", "video", "document", "sticker",
			"location", "contacts", "interactive", "reaction":
			// Another type's object: the schema checks it even on a
			// text message.
			return false
		}
		// Any other field is ignored by the schema, as by the original.
	}
	_, hasTo := m["to"]
	_, hasText := m["text"]
	return hasTo && hasText
}

// hasDigit is the pattern "[0-9]" (found anywhere: JSON Schema patterns
// are not anchored).
func hasDigit(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= '0' && s[i] <= '9' {
			return true
		}
	}
	return false
}

// hasNonSpace is the pattern "\S" as Go's regexp (the validator's) reads
// it: a character other than \t, \n, \f, \r and space.
func hasNonSpace(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\t', '\n', '\f', '\r', ' ':
		default:
			return true
		}
	}
	return false
}
