package media

import "testing"

// An inbound callback names its medium by the type's object; text, a link
// or a malformed payload name none.
func TestInboundMediaOfACallback(t *testing.T) {
	for _, c := range []struct{ payload, id, typ string }{
		{`{"contact":{"wa_id":"1"},"message":{"type":"image","image":{"id":"1234567890","mime_type":"image/jpeg"}}}`, "1234567890", "image"},
		{`{"message":{"type":"voice","voice":{"id":"42","mime_type":"audio/ogg"}}}`, "42", "voice"},
		{`{"message":{"type":"document","document":{"link":"https://example.com/a.pdf"}}}`, "", "document"},
		{`{"message":{"type":"text","text":{"body":"hi"}}}`, "", "text"},
		{`{"message":"not an object"}`, "", ""},
	} {
		id, typ := inboundMedia([]byte(c.payload))
		if id != c.id || (id != "" && typ != c.typ) {
			t.Errorf("%s: %q %q, want %q %q", c.payload, id, typ, c.id, c.typ)
		}
		if c.id != "" && !mediaIDRE.MatchString(id) {
			t.Errorf("%s: the network's id %q is not a media id GET /v1/media takes", c.payload, id)
		}
	}
	for _, bad := range []string{"../etc/passwd", "12/34", "", "123456789012345678901234567890123456789012"} {
		if mediaIDRE.MatchString(bad) {
			t.Errorf("media id %q taken", bad)
		}
	}
}
