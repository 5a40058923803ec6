package accept

import (
	"encoding/json"
	"testing"
)

// Every media object that names a provider is found, wherever the message
// type puts it; objects without a link or id (a provider key elsewhere)
// are left alone.
func TestCollectProviderMedia(t *testing.T) {
	body := `{"to":"1","type":"template","template":{"namespace":"n","name":"x","language":{"code":"en"},
		"components":[{"type":"header","parameters":[
			{"type":"image","image":{"link":"https://a/1.png","provider":{"name":"p1"}}},
			{"type":"document","document":{"link":"https://a/2.pdf","provider":{"name":"p2"},"filename":"2.pdf"}},
			{"type":"video","video":{"link":"https://a/3.mp4"}},
			{"type":"text","text":"hi","provider":"not media"}]}]}}`
	var doc any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	var refs []map[string]any
	collectProviderMedia(doc, &refs)
	if len(refs) != 2 {
		t.Fatalf("found %d media objects with a provider, want 2: %v", len(refs), refs)
	}
	for i, want := range []string{"p1", "p2"} {
		if refs[i]["provider"].(map[string]any)["name"] != want {
			t.Errorf("object %d names %v, want %s", i, refs[i]["provider"], want)
		}
	}
}
