package cloudapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphtest"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// The account ops, registration and media against the Graph API test
// server, which validates every request against Meta's description and
// records what it did; error codes are its injected faults or its own
// refusals.

const (
	opsPhone = "15550001234" // the phone number id; graphtest shows it as the number too
	opsToken = "EAAopstoken"
)

// opsServer is a Graph API test server for opsPhone, with handler (nil:
// the server itself) in front of it.
func opsServer(t *testing.T, front func(http.Handler) http.Handler) (*graphtest.Server, string) {
	t.Helper()
	gs, err := graphtest.New(graphtest.Config{PhoneNumberIDs: []string{opsPhone}, AccessToken: opsToken})
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = gs
	if front != nil {
		h = front(gs)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(func() { hs.Close(); gs.Close() })
	return gs, hs.URL
}

// newOpsTransport is a transport on the server at url, without a
// database, its media directory a fresh one.
func newOpsTransport(t *testing.T, url string) *Transport {
	t.Helper()
	cfg := Config{PhoneNumberID: opsPhone, AccessToken: opsToken, GraphVersion: "v23.0", BaseURL: url, MediaDir: t.TempDir()}
	return New(cfg, Options{})
}

func claimShard(t *testing.T, tr *Transport) {
	t.Helper()
	if err := tr.Connect(context.Background(), transport.ConnectRequest{Shard: 0, Epoch: 1, Node: "n1", Deadline: transport.MonoNow() + int64(time.Minute)}); err != nil {
		t.Fatal(err)
	}
}

func opBody(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// served is "METHOD path" of each request the server took, and fails the
// test on any it refused (a request that does not fit the description).
func served(t *testing.T, gs *graphtest.Server) []string {
	t.Helper()
	var out []string
	for _, r := range gs.Snapshot().Requests {
		if r.Status != http.StatusOK && r.Fault == "" {
			t.Errorf("the server refused %s %s: HTTP %d, code %d", r.Method, r.Path, r.Status, r.Code)
		}
		out = append(out, r.Method+" "+strings.TrimPrefix(r.Path, "/v23.0"))
	}
	return out
}

// Each op reaches its Cloud API endpoint, and the server did what the op
// means: the profile holds the fields, the PIN is set, the read recorded.
func TestCallOpsRoundTrip(t *testing.T) {
	gs, url := opsServer(t, nil)
	tr := newOpsTransport(t, url)
	claimShard(t, tr)
	ctx := context.Background()
	call := func(op string, body any) {
		t.Helper()
		res, err := tr.Call(ctx, op, opBody(body))
		if err != nil || string(res) != "{}" {
			t.Fatalf("%s: %s, %v", op, res, err)
		}
	}
	profile := "POST /" + opsPhone + "/whatsapp_business_profile"

	call(transport.OpSetProfileAbout, transport.ProfileAbout{Text: "Open 9 to 5 ☀"})
	call(transport.OpSetBusinessProfile, transport.BusinessProfile{Address: "1 Main St", Description: "Shop", Email: "a@b.example",
		Vertical: "Beauty, Spa and Salon", Websites: []string{"https://a.example"}})
	st := gs.Snapshot()
	p := st.Profiles[opsPhone]
	if p["about"] != "Open 9 to 5 ☀" || p["address"] != "1 Main St" || p["description"] != "Shop" || p["email"] != "a@b.example" ||
		p["vertical"] != "BEAUTY" || len(p["websites"].([]any)) != 1 {
		t.Errorf("profile at the server: %v", p)
	}
	// The whole profile as it is to be: what is empty is cleared; email
	// and vertical cannot be, and are not sent.
	call(transport.OpSetBusinessProfile, transport.BusinessProfile{})
	p = gs.Snapshot().Profiles[opsPhone]
	if p["address"] != "" || p["description"] != "" || len(p["websites"].([]any)) != 0 || p["email"] != "a@b.example" || p["vertical"] != "BEAUTY" {
		t.Errorf("profile after clearing: %v", p)
	}

	call(transport.OpSetTwoStep, transport.TwoStep{Pin: "123456"})
	if pin := gs.Snapshot().Pins[opsPhone]; pin != "123456" {
		t.Errorf("two-step PIN at the server: %q", pin)
	}

	wamid := "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUYzMjEzNDM2RTZGQ0MzMDJBRgA="
	call(transport.OpMarkRead, transport.MarkReadRequest{MessageID: wamid, From: "16505551234"})
	st = gs.Snapshot()
	if len(st.Reads) != 1 || st.Reads[0].MessageID != wamid || st.Reads[0].Phone != opsPhone {
		t.Errorf("reads at the server: %+v", st.Reads)
	}
	last := st.Requests[len(st.Requests)-1]
	if !last.HasSender || last.Node != "n1" || last.Epoch != 1 {
		t.Errorf("mark_read went without the claim's headers: %+v", last)
	}

	want := []string{profile, profile, profile, "POST /" + opsPhone, "POST /" + opsPhone + "/messages"}
	if got := served(t, gs); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("requests %v, want %v", got, want)
	}
}

// What the Cloud API does not have is ErrUnsupported with its reason, and
// no request; stickerpacks is an empty catalogue.
func TestOpsTheCloudAPILacks(t *testing.T) {
	gs, url := opsServer(t, nil)
	tr := newOpsTransport(t, url)
	ctx := context.Background()
	for op, why := range map[string]string{
		transport.OpSetProfilePhoto:    "Resumable Upload API",
		transport.OpDeleteProfilePhoto: "no way to remove a profile photo",
		transport.OpDeleteTwoStep:      "no endpoint to disable two-step verification",
		transport.OpIdentity:           "no identity check",
		transport.OpIdentityAck:        "no identity check",
		"no.such.op":                   "no.such.op",
	} {
		body := []byte(`{"wa_id":"16505551234","content_type":"image/png","data":"iVBORw=="}`)
		_, err := tr.Call(ctx, op, body)
		if !errors.Is(err, transport.ErrUnsupported) || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: %v, want ErrUnsupported saying %q", op, err, why)
		}
	}
	res, err := tr.Call(ctx, transport.OpStickerpacks, nil)
	if err != nil || string(res) != `{"stickerpacks":[]}` {
		t.Errorf("stickerpacks: %s, %v; want an empty catalogue", res, err)
	}
	if reqs := served(t, gs); len(reqs) != 0 {
		t.Errorf("ops the Cloud API lacks sent %v", reqs)
	}
}

// mark_read is the shard's: without a claim it sends nothing.
func TestMarkReadNeedsTheClaim(t *testing.T) {
	gs, url := opsServer(t, nil)
	tr := newOpsTransport(t, url)
	_, err := tr.Call(context.Background(), transport.OpMarkRead, opBody(transport.MarkReadRequest{MessageID: "wamid.x"}))
	if !errors.Is(err, transport.ErrNotConnected) {
		t.Fatalf("mark_read without a claim: %v, want ErrNotConnected", err)
	}
	if reqs := served(t, gs); len(reqs) != 0 {
		t.Errorf("sent %v without a claim", reqs)
	}
}

// Every Graph error code the ops map has its transport error; 190 shows in
// Health. (100 with subcode 33, the server's answer for an object it does
// not have, is in TestMedia.)
func TestGraphErrorsMapToTransportErrors(t *testing.T) {
	gs, url := opsServer(t, nil)
	tr := newOpsTransport(t, url)
	ctx := context.Background()
	about := opBody(transport.ProfileAbout{Text: "hi"})
	cases := []struct {
		fault graphtest.Fault
		want  error // nil: none of the sentinels
		says  string
	}{
		{graphtest.Fault{Code: graphapi.CodeInvalidParameter}, transport.ErrInvalidValue, "injected by graphtest"},
		{graphtest.Fault{Code: graphapi.CodeRecipientNotValid}, transport.ErrInvalidValue, "Parameter value is not valid"},
		{graphtest.Fault{Code: codeNotFound, Message: "WhatsApp Business Profile not found"}, transport.ErrNoSuchItem, "not found"},
		{graphtest.Fault{HTTPStatus: http.StatusNotFound}, transport.ErrNoSuchItem, "404"},
		{graphtest.Fault{Code: graphapi.CodeService}, nil, "Service temporarily unavailable"},
		{graphtest.Fault{Code: graphapi.CodeTooManyCalls}, nil, "request limit"},
	}
	sentinels := []error{transport.ErrInvalidValue, transport.ErrNoSuchItem, transport.ErrUnsupported}
	for _, c := range cases {
		c.fault.Path, c.fault.Count = "/whatsapp_business_profile", 1
		gs.AddFault(c.fault)
		_, err := tr.Call(ctx, transport.OpSetProfileAbout, about)
		if err == nil {
			t.Errorf("fault %+v: no error", c.fault)
			continue
		}
		for _, s := range sentinels {
			if errors.Is(err, s) != (s == c.want) {
				t.Errorf("fault %+v: %v; want sentinel %v", c.fault, err, c.want)
			}
		}
		if !strings.Contains(err.Error(), c.says) {
			t.Errorf("fault %+v: %q does not say %q", c.fault, err, c.says)
		}
	}

	gs.ExpireToken()
	_, err := tr.Call(ctx, transport.OpSetProfileAbout, about)
	if err == nil || !strings.Contains(err.Error(), "access token") || strings.Contains(err.Error(), opsToken) {
		t.Fatalf("190: %v, want an access token error without the token", err)
	}
	if h, _ := tr.Health(ctx); !strings.Contains(h.LastError, "access token") || !strings.Contains(h.LastError, "190") {
		t.Errorf("after 190 Health says %q, want the token error", h.LastError)
	}
}

// Registration: a code requested for the transport's number, verified,
// then /register with the PIN given at the request. A wrong or expired
// code is ErrBadCode and registers nothing.
func TestRegistration(t *testing.T) {
	gs, url := opsServer(t, nil)
	tr := newOpsTransport(t, url)
	ctx := context.Background()
	req := transport.RegistrationRequest{CC: "1", Phone: "5550001234", Method: transport.MethodVoice, Cert: []byte("ignored"), Pin: "246810"}

	res, err := tr.RequestCode(ctx, req)
	if err != nil || res.VName != "graphtest" || res.AlreadyRegistered {
		t.Fatalf("request code: %+v, %v", res, err)
	}
	st := gs.Snapshot()
	code := st.Codes[opsPhone]
	if code == "" || len(st.Registrations) != 1 || !strings.Contains(string(st.Registrations[0].Body), `"code_method":"VOICE"`) {
		t.Fatalf("request code at the server: %+v, code %q", st.Registrations, code)
	}

	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	if err := tr.VerifyCode(ctx, transport.VerifyRequest{CC: "1", Phone: "5550001234", Code: wrong}); !errors.Is(err, transport.ErrBadCode) {
		t.Fatalf("a wrong code (136025): %v, want ErrBadCode", err)
	}
	gs.AddFault(graphtest.Fault{Path: "/verify_code", Count: 1, Code: graphapi.CodeInvalidParameter, HTTPStatus: http.StatusUnprocessableEntity,
		Message: "The verification code is invalid or has expired"})
	if err := tr.VerifyCode(ctx, transport.VerifyRequest{CC: "1", Phone: "5550001234", Code: code}); !errors.Is(err, transport.ErrBadCode) {
		t.Fatalf("an expired code (100): %v, want ErrBadCode", err)
	}
	if pin := gs.Snapshot().Pins[opsPhone]; pin != "" {
		t.Fatalf("registered (PIN %q) after refused codes", pin)
	}

	if err := tr.VerifyCode(ctx, transport.VerifyRequest{CC: "1", Phone: "5550001234", Code: code}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	st = gs.Snapshot()
	var ops []string
	for _, r := range st.Registrations {
		ops = append(ops, r.Op)
	}
	if strings.Join(ops, ",") != "request_code,verify_code,verify_code,register" || !st.Registrations[3].OK {
		t.Errorf("registration at the server: %v", st.Registrations)
	}
	if st.Pins[opsPhone] != "246810" {
		t.Errorf("registered with PIN %q, want the request's", st.Pins[opsPhone])
	}
}

// verifiedNumber answers GET /{phone} with code_verification_status
// VERIFIED, as Meta does for a number that passed code verification
// (graphtest leaves the field out); the server still serves and records
// the request.
func verifiedNumber(gs http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v23.0/"+opsPhone {
			gs.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		gs.ServeHTTP(rec, r)
		var info map[string]any
		if json.Unmarshal(rec.Body.Bytes(), &info) != nil || rec.Code != http.StatusOK {
			w.WriteHeader(rec.Code)
			io.Copy(w, rec.Body)
			return
		}
		info["code_verification_status"] = "VERIFIED"
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(info)
	})
}

// A number the Cloud API has verified already is registered at once (the
// original's 201, no code); a PIN it refuses (133005) is the request's
// fault.
func TestRegistrationOfAVerifiedNumber(t *testing.T) {
	gs, url := opsServer(t, verifiedNumber)
	tr := newOpsTransport(t, url)
	ctx := context.Background()
	req := transport.RegistrationRequest{CC: "1", Phone: "5550001234", Method: transport.MethodSMS, Pin: "135790"}
	res, err := tr.RequestCode(ctx, req)
	if err != nil || !res.AlreadyRegistered {
		t.Fatalf("request code of a verified number: %+v, %v", res, err)
	}
	st := gs.Snapshot()
	if len(st.Registrations) != 1 || st.Registrations[0].Op != "register" || st.Pins[opsPhone] != "135790" {
		t.Fatalf("at the server: %+v, PIN %q; want one register with the request's PIN", st.Registrations, st.Pins[opsPhone])
	}
	req.Pin = "975310"
	if _, err := tr.RequestCode(ctx, req); !errors.Is(err, transport.ErrInvalidValue) || !strings.Contains(err.Error(), "PIN") {
		t.Fatalf("another PIN (133005): %v, want ErrInvalidValue about the PIN", err)
	}
}

// What registration refuses before any code is sent: another number than
// the transport's, and no PIN to register with.
func TestRegistrationRefusals(t *testing.T) {
	gs, url := opsServer(t, nil)
	tr := newOpsTransport(t, url)
	ctx := context.Background()
	_, err := tr.RequestCode(ctx, transport.RegistrationRequest{CC: "44", Phone: "7700900123", Method: transport.MethodSMS, Pin: "123456"})
	if !errors.Is(err, transport.ErrInvalidValue) || !strings.Contains(err.Error(), opsPhone) {
		t.Errorf("another number: %v, want ErrInvalidValue naming +%s", err, opsPhone)
	}
	_, err = tr.RequestCode(ctx, transport.RegistrationRequest{CC: "1", Phone: "5550001234", Method: transport.MethodSMS})
	if !errors.Is(err, transport.ErrInvalidValue) || !strings.Contains(err.Error(), "pin") {
		t.Errorf("no PIN: %v, want ErrInvalidValue about the pin", err)
	}
	if err := tr.VerifyCode(ctx, transport.VerifyRequest{CC: "1", Phone: "5550001234", Code: "123456"}); !errors.Is(err, transport.ErrInvalidValue) {
		t.Errorf("verify without a PIN: %v, want ErrInvalidValue", err)
	}
	for _, r := range served(t, gs) {
		if strings.HasPrefix(r, "POST") {
			t.Errorf("a refused registration sent %s", r)
		}
	}
}

// Media: an upload is multipart as Meta's description has it; an inbound
// medium is fetched by id with the token; one the server does not have
// (100, subcode 33) is ErrNoSuchItem; one too large to hand on is refused.
func TestMedia(t *testing.T) {
	gs, url := opsServer(t, nil)
	tr := newOpsTransport(t, url)
	claimShard(t, tr)
	ctx := context.Background()
	jpeg := append([]byte{0xff, 0xd8, 0xff, 0xe0}, bytes.Repeat([]byte("x"), 2000)...)
	ours := "0b6c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"
	if err := os.WriteFile(filepath.Join(tr.cfg.MediaDir, ours), jpeg, 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := tr.Current()
	id, err := tr.ops.MediaID(ctx, c.sender(), ours)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	st := gs.Snapshot()
	if len(st.Media) != 1 || st.Media[0].ID != id || st.Media[0].MimeType != "image/jpeg" || st.Media[0].Size != len(jpeg) {
		t.Fatalf("media at the server: %+v, want %s", st.Media, id)
	}
	if _, err := tr.ops.MediaID(ctx, c.sender(), "11111111-2222-4333-8444-555555555555"); !errors.Is(err, transport.ErrNoSuchItem) {
		t.Errorf("an upload without its file: %v, want ErrNoSuchItem", err)
	}

	// An inbound medium (the server holds it as Meta would).
	png := append([]byte("\x89PNG\r\n\x1a\n"), bytes.Repeat([]byte{7}, 3000)...)
	in := gs.PutMedia(opsPhone, "image/png", png)
	out, err := tr.Call(ctx, transport.OpMediaDownload, opBody(transport.MediaRef{ID: in.ID}))
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	var mc transport.MediaContent
	if err := json.Unmarshal(out, &mc); err != nil || !bytes.Equal(mc.Data, png) || mc.MimeType != "image/png" {
		t.Fatalf("download: %d bytes of %q, %v", len(mc.Data), mc.MimeType, err)
	}

	if _, err := tr.Call(ctx, transport.OpMediaDownload, opBody(transport.MediaRef{ID: "999000111"})); !errors.Is(err, transport.ErrNoSuchItem) {
		t.Errorf("an unknown medium: %v, want ErrNoSuchItem", err)
	}
	big := gs.PutMedia(opsPhone, "application/pdf", make([]byte, transport.MaxMediaContent+1))
	if _, err := tr.Call(ctx, transport.OpMediaDownload, opBody(transport.MediaRef{ID: big.ID})); !errors.Is(err, transport.ErrInvalidValue) {
		t.Errorf("a medium too large: %v, want ErrInvalidValue", err)
	}
}
