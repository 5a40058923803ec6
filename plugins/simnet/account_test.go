package simnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"image"
	"image/png"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// The account ops through the Transport, as a master's plugin makes them:
// each reaches the network, which shows it on its HTTP API; a value the
// network refuses is ErrInvalidValue and changes nothing; an op it does
// not know is ErrUnsupported.
func TestAccountOps(t *testing.T) {
	s, addr := testServer(t, Config{}, nil)
	api := httptest.NewServer(s.Handler())
	t.Cleanup(api.Close)
	tr := NewTransport(addr, slog.Default())
	call := func(op string, body any) ([]byte, error) {
		b, _ := json.Marshal(body)
		return tr.Call(ctxT(t), op, b)
	}
	view := func() AccountSettings {
		var a AccountSettings
		getJSON(t, api.URL+"/v1/account/settings", &a)
		return a
	}

	if _, err := call(transport.OpSetProfileAbout, transport.ProfileAbout{Text: "hello"}); err != nil {
		t.Fatal(err)
	}
	var img bytes.Buffer
	png.Encode(&img, image.NewRGBA(image.Rect(0, 0, 4, 3)))
	res, err := call(transport.OpSetProfilePhoto, transport.ProfilePhoto{ContentType: "image/png", Data: img.Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	var pr transport.ProfilePhotoResult
	if json.Unmarshal(res, &pr); pr.Link != "" {
		t.Errorf("link %q from a network with no API listener", pr.Link)
	}
	bp := transport.BusinessProfile{Email: "a@example.com", Websites: []string{"https://example.com"}}
	if _, err := call(transport.OpSetBusinessProfile, bp); err != nil {
		t.Fatal(err)
	}
	if _, err := call(transport.OpSetTwoStep, transport.TwoStep{Pin: "123456"}); err != nil {
		t.Fatal(err)
	}
	got := view()
	if got.About != "hello" || got.Photo == nil || got.Photo.Width != 4 || got.Photo.Height != 3 ||
		got.BusinessProfile.Email != bp.Email || !got.TwoStep || got.Updates != 4 {
		t.Fatalf("the network's account settings: %+v", got)
	}

	for name, c := range map[string]struct {
		op   string
		body any
	}{
		"about too long":   {transport.OpSetProfileAbout, transport.ProfileAbout{Text: strings.Repeat("é", 140)}},
		"photo not image":  {transport.OpSetProfilePhoto, transport.ProfilePhoto{ContentType: "image/png", Data: []byte("no")}},
		"three websites":   {transport.OpSetBusinessProfile, transport.BusinessProfile{Websites: []string{"a", "b", "c"}}},
		"pin with letters": {transport.OpSetTwoStep, transport.TwoStep{Pin: "12a456"}},
	} {
		if _, err := call(c.op, c.body); !errors.Is(err, transport.ErrInvalidValue) {
			t.Errorf("%s: %v, want ErrInvalidValue", name, err)
		}
	}
	if after := view(); after.Updates != 4 || after.About != "hello" || !after.TwoStep {
		t.Errorf("refused ops changed the network: %+v", after)
	}
	if _, err := call("account.nonsense", nil); !errors.Is(err, transport.ErrUnsupported) {
		t.Errorf("unknown op: %v, want ErrUnsupported", err)
	}

	for _, op := range []string{transport.OpDeleteProfilePhoto, transport.OpDeleteTwoStep} {
		if _, err := tr.Call(ctxT(t), op, nil); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
	}
	if after := view(); after.Photo != nil || after.TwoStep {
		t.Errorf("after the deletes: %+v", after)
	}
}
