package cloudapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/metaspec"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// The account ops, registration and media against a Graph API server that
// validates every request against Meta's description (metaspec) and
// records it. Its answers for each operation are set by the test (an
// error code to inject, the phone number's state), as the Graph API test
// server's faults are.

const (
	testPhoneID = "106540352242922"
	opsToken   = "EAAtesttoken"
	testNumber  = "15550001234" // the number testPhoneID is
)

// recorded is one request the server took.
type recorded struct {
	Method, Path, Query, ContentType string
	Body                             []byte
	Fields                           map[string]string // a multipart body's fields
}

// graphServer is the Graph API side of these tests.
type graphServer struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	requests []recorded
	// faults: "METHOD /path" (without the version) → the Graph error to
	// answer, once.
	faults map[string]*graphapi.Error
	// verified is the phone number's code_verification_status.
	verified bool
	// media are the media the server holds, by id.
	media map[string][]byte
	// mediaSize, if set, is the file_size GET /{media-id} claims.
	mediaSize int
}

func newGraphServer(t *testing.T) *graphServer {
	g := &graphServer{t: t, faults: map[string]*graphapi.Error{}, media: map[string][]byte{}, mediaSize: -1}
	g.srv = httptest.NewServer(http.HandlerFunc(g.serve))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *graphServer) fail(route string, e graphapi.Error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.faults[route] = &e
}

func (g *graphServer) taken() []recorded {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]recorded(nil), g.requests...)
}

func (g *graphServer) reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.requests = nil
}

func (g *graphServer) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if r.Header.Get("Authorization") != "Bearer "+opsToken {
		writeGraph(w, http.StatusUnauthorized, graphapi.Error{Message: "Invalid OAuth access token", Type: "OAuthException", Code: 190})
		return
	}
	// The media URL GET /{media-id} answered: not a Graph path.
	if id, ok := strings.CutPrefix(r.URL.Path, "/lookaside/"); ok {
		g.mu.Lock()
		b, found := g.media[id]
		g.requests = append(g.requests, recorded{Method: r.Method, Path: r.URL.Path})
		g.mu.Unlock()
		if !found {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(b)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err := metaspec.ValidateRequest(r, body); err != nil {
		g.t.Errorf("%s %s does not fit Meta's description: %v", r.Method, r.URL.Path, err)
		writeGraph(w, http.StatusBadRequest, graphapi.Error{Message: err.Error(), Type: "OAuthException", Code: 100})
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/v23.0")
	rec := recorded{Method: r.Method, Path: path, Query: r.URL.RawQuery, ContentType: r.Header.Get("Content-Type"), Body: body}
	if mt, params, err := mime.ParseMediaType(rec.ContentType); err == nil && mt == "multipart/form-data" {
		rec.Fields = map[string]string{}
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			b, _ := io.ReadAll(p)
			rec.Fields[p.FormName()] = string(b)
			if p.FormName() == "file" {
				rec.Fields["file.content_type"] = p.Header.Get("Content-Type")
			}
		}
	}
	g.mu.Lock()
	g.requests = append(g.requests, rec)
	f := g.faults[r.Method+" "+path]
	delete(g.faults, r.Method+" "+path)
	verified := g.verified
	g.mu.Unlock()
	if f != nil {
		status := http.StatusBadRequest
		switch {
		case f.Code == graphapi.CodeAccessToken:
			status = http.StatusUnauthorized
		case f.Code == codeNotFound:
			status = http.StatusNotFound
		case f.HTTPStatus != 0:
			status = f.HTTPStatus
		case graphapi.Classify(f) == graphapi.Retry:
			status = http.StatusInternalServerError
		}
		writeGraph(w, status, *f)
		return
	}
	switch {
	case r.Method == http.MethodGet && path == "/"+testPhoneID:
		st := "UNVERIFIED"
		if verified {
			st = "VERIFIED"
		}
		writeJSONAnswer(w, map[string]string{"id": testPhoneID, "display_phone_number": "+1 555-000-1234", "verified_name": "Jasper's Market", "code_verification_status": st})
	case r.Method == http.MethodPost && path == "/"+testPhoneID+"/media":
		id := fmt.Sprint(4490709327384000 + len(g.taken()))
		g.mu.Lock()
		g.media[id] = []byte(rec.Fields["file"])
		g.mu.Unlock()
		writeJSONAnswer(w, map[string]string{"id": id})
	case r.Method == http.MethodPost && path == "/"+testPhoneID+"/messages":
		writeJSONAnswer(w, map[string]bool{"success": true})
	case r.Method == http.MethodGet && !strings.Contains(path[1:], "/"):
		id := path[1:]
		g.mu.Lock()
		b, ok := g.media[id]
		size := g.mediaSize
		g.mu.Unlock()
		if !ok {
			writeGraph(w, http.StatusBadRequest, graphapi.Error{Message: "Unsupported get request. Object with ID '" + id + "' does not exist", Type: "GraphMethodException", Code: 100, ErrorSubcode: 33})
			return
		}
		if size < 0 {
			size = len(b)
		}
		sum := sha256.Sum256(b)
		writeJSONAnswer(w, map[string]string{"id": id, "messaging_product": "whatsapp", "mime_type": "image/jpeg",
			"sha256": hex.EncodeToString(sum[:]), "file_size": fmt.Sprint(size), "url": g.srv.URL + "/lookaside/" + id})
	case r.Method == http.MethodDelete:
		g.mu.Lock()
		delete(g.media, path[1:])
		g.mu.Unlock()
		writeJSONAnswer(w, map[string]bool{"success": true})
	default:
		writeJSONAnswer(w, map[string]bool{"success": true})
	}
}

func writeGraph(w http.ResponseWriter, status int, e graphapi.Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(graphapi.ErrorDocument{Error: e})
}

func writeJSONAnswer(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// newOpsTransport is a transport on g, without a database, its media
// directory a fresh one.
func newOpsTransport(t *testing.T, g *graphServer) *Transport {
	t.Helper()
	cfg := Config{PhoneNumberID: testPhoneID, AccessToken: opsToken, GraphVersion: "v23.0", BaseURL: g.srv.URL, MediaDir: t.TempDir()}
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

// Each op reaches its Cloud API endpoint with the body Meta's description
// has (the server validated it), and answers what the op's result is.
func TestCallOpsRoundTrip(t *testing.T) {
	g := newGraphServer(t)
	tr := newOpsTransport(t, g)
	claimShard(t, tr)
	ctx := context.Background()
	profile := "/" + testPhoneID + "/whatsapp_business_profile"
	cases := []struct {
		op         string
		body       any
		path       string
		wantFields map[string]any
	}{
		{transport.OpSetProfileAbout, transport.ProfileAbout{Text: "Open 9 to 5 ☀"}, profile,
			map[string]any{"messaging_product": "whatsapp", "about": "Open 9 to 5 ☀"}},
		{transport.OpSetBusinessProfile, transport.BusinessProfile{Address: "1 Main St", Description: "Shop", Email: "a@b.example",
			Vertical: "Beauty, Spa and Salon", Websites: []string{"https://a.example"}}, profile,
			map[string]any{"messaging_product": "whatsapp", "address": "1 Main St", "description": "Shop", "email": "a@b.example",
				"vertical": "BEAUTY", "websites": []any{"https://a.example"}}},
		// The whole profile as it is to be: what is empty is cleared
		// (email and vertical cannot be, and are not sent).
		{transport.OpSetBusinessProfile, transport.BusinessProfile{}, profile,
			map[string]any{"messaging_product": "whatsapp", "address": "", "description": "", "websites": []any{}}},
		{transport.OpSetTwoStep, transport.TwoStep{Pin: "123456"}, "/" + testPhoneID, map[string]any{"pin": "123456"}},
		{transport.OpMarkRead, transport.MarkReadRequest{MessageID: "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUYzMjEzNDM2RTZGQ0MzMDJBRgA=", From: "16505551234"},
			"/" + testPhoneID + "/messages",
			map[string]any{"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUYzMjEzNDM2RTZGQ0MzMDJBRgA="}},
	}
	for _, c := range cases {
		t.Run(c.op, func(t *testing.T) {
			g.reset()
			res, err := tr.Call(ctx, c.op, opBody(c.body))
			if err != nil {
				t.Fatalf("%s: %v", c.op, err)
			}
			if string(res) != "{}" {
				t.Errorf("%s answered %s, want {}", c.op, res)
			}
			reqs := g.taken()
			if len(reqs) != 1 || reqs[0].Method != http.MethodPost || reqs[0].Path != c.path {
				t.Fatalf("%s sent %+v, want one POST %s", c.op, reqs, c.path)
			}
			var got map[string]any
			if err := json.Unmarshal(reqs[0].Body, &got); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(c.wantFields) {
				t.Errorf("%s sent %v, want %v", c.op, got, c.wantFields)
			}
		})
	}
}

// What the Cloud API does not have is ErrUnsupported with its reason, and
// no request; stickerpacks is an empty catalogue.
func TestOpsTheCloudAPILacks(t *testing.T) {
	g := newGraphServer(t)
	tr := newOpsTransport(t, g)
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
	if reqs := g.taken(); len(reqs) != 0 {
		t.Errorf("ops the Cloud API lacks sent %+v", reqs)
	}
}

// mark_read is the shard's: without a claim it sends nothing.
func TestMarkReadNeedsTheClaim(t *testing.T) {
	g := newGraphServer(t)
	tr := newOpsTransport(t, g)
	_, err := tr.Call(context.Background(), transport.OpMarkRead, opBody(transport.MarkReadRequest{MessageID: "wamid.x"}))
	if !errors.Is(err, transport.ErrNotConnected) {
		t.Fatalf("mark_read without a claim: %v, want ErrNotConnected", err)
	}
	if reqs := g.taken(); len(reqs) != 0 {
		t.Errorf("sent %+v without a claim", reqs)
	}
}

// Every Graph error code the ops map has its transport error; 190 shows in
// Health until a request is accepted.
func TestGraphErrorsMapToTransportErrors(t *testing.T) {
	g := newGraphServer(t)
	tr := newOpsTransport(t, g)
	claimShard(t, tr)
	ctx := context.Background()
	profile := "POST /" + testPhoneID + "/whatsapp_business_profile"
	about := opBody(transport.ProfileAbout{Text: "hi"})
	cases := []struct {
		e    graphapi.Error
		want error // nil: none of the sentinels
	}{
		{graphapi.Error{Message: "Invalid parameter", Type: "OAuthException", Code: 100, ErrorData: &graphapi.ErrorData{Details: "about: too long"}}, transport.ErrInvalidValue},
		{graphapi.Error{Message: "Parameter value is not valid", Code: 131009}, transport.ErrInvalidValue},
		{graphapi.Error{Message: "WhatsApp Business Profile not found", Type: "GraphMethodException", Code: 803}, transport.ErrNoSuchItem},
		{graphapi.Error{Message: "Unsupported post request", Type: "GraphMethodException", Code: 100, ErrorSubcode: 33}, transport.ErrNoSuchItem},
		{graphapi.Error{Message: "Unknown path", Code: 12345, HTTPStatus: http.StatusNotFound}, transport.ErrNoSuchItem},
		{graphapi.Error{Message: "An unexpected error occurred", Code: 2}, nil},
		{graphapi.Error{Message: "Application request limit reached", Code: 4, HTTPStatus: http.StatusTooManyRequests}, nil},
	}
	sentinels := []error{transport.ErrInvalidValue, transport.ErrNoSuchItem, transport.ErrUnsupported}
	for _, c := range cases {
		g.fail(profile, c.e)
		_, err := tr.Call(ctx, transport.OpSetProfileAbout, about)
		if err == nil {
			t.Errorf("code %d: no error", c.e.Code)
			continue
		}
		for _, s := range sentinels {
			if errors.Is(err, s) != (s == c.want) {
				t.Errorf("code %d: %v; want sentinel %v", c.e.Code, err, c.want)
			}
		}
		if !strings.Contains(err.Error(), c.e.Message) {
			t.Errorf("code %d: %q does not say the Graph API's %q", c.e.Code, err, c.e.Message)
		}
	}

	g.fail(profile, graphapi.Error{Message: "Error validating access token: Session has expired", Type: "OAuthException", Code: 190, ErrorSubcode: 463})
	_, err := tr.Call(ctx, transport.OpSetProfileAbout, about)
	if err == nil || !strings.Contains(err.Error(), "access token") {
		t.Fatalf("190: %v, want an access token error", err)
	}
	if h, _ := tr.Health(ctx); !strings.Contains(h.LastError, "access token") || !strings.Contains(h.LastError, "190") {
		t.Errorf("after 190 Health says %q, want the token error", h.LastError)
	}
	if strings.Contains(err.Error(), opsToken) {
		t.Errorf("the error shows the token: %v", err)
	}
}

// Registration: a code requested for the transport's number, verified,
// then /register with the PIN given at the request.
func TestRegistration(t *testing.T) {
	g := newGraphServer(t)
	tr := newOpsTransport(t, g)
	ctx := context.Background()
	req := transport.RegistrationRequest{CC: "1", Phone: "5550001234", Method: transport.MethodVoice, Cert: []byte("ignored"), Pin: "246810"}

	res, err := tr.RequestCode(ctx, req)
	if err != nil || res.VName != "Jasper's Market" || res.AlreadyRegistered {
		t.Fatalf("request code: %+v, %v", res, err)
	}
	reqs := g.taken()
	if len(reqs) != 2 || reqs[1].Path != "/"+testPhoneID+"/request_code" || !strings.Contains(string(reqs[1].Body), `"code_method":"VOICE"`) {
		t.Fatalf("request code sent %+v", reqs)
	}

	g.reset()
	g.fail("POST /"+testPhoneID+"/verify_code", graphapi.Error{Message: "Code couldn't be verified", Code: codeCodeNotVerified})
	if err := tr.VerifyCode(ctx, transport.VerifyRequest{CC: "1", Phone: "5550001234", Code: "000000"}); !errors.Is(err, transport.ErrBadCode) {
		t.Fatalf("a wrong code (136025): %v, want ErrBadCode", err)
	}
	g.fail("POST /"+testPhoneID+"/verify_code", graphapi.Error{Message: "The verification code is invalid or has expired", Type: "GraphMethodException", Code: 100})
	if err := tr.VerifyCode(ctx, transport.VerifyRequest{CC: "1", Phone: "5550001234", Code: "000000"}); !errors.Is(err, transport.ErrBadCode) {
		t.Fatalf("an expired code (100): %v, want ErrBadCode", err)
	}
	for _, r := range g.taken() {
		if strings.HasSuffix(r.Path, "/register") {
			t.Fatalf("registered after a refused code: %+v", r)
		}
	}

	g.reset()
	if err := tr.VerifyCode(ctx, transport.VerifyRequest{CC: "1", Phone: "5550001234", Code: "123456"}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	reqs = g.taken()
	if len(reqs) != 2 || reqs[0].Path != "/"+testPhoneID+"/verify_code" || reqs[1].Path != "/"+testPhoneID+"/register" {
		t.Fatalf("verify sent %+v, want verify_code then register", reqs)
	}
	var reg map[string]string
	json.Unmarshal(reqs[1].Body, &reg)
	if reg["pin"] != "246810" || reg["messaging_product"] != "whatsapp" {
		t.Errorf("register sent %v, want the request's PIN", reg)
	}
}

// A number the Cloud API has verified already is registered at once (the
// original's 201, no code); a PIN it refuses is the request's fault.
func TestRegistrationOfAVerifiedNumber(t *testing.T) {
	g := newGraphServer(t)
	g.verified = true
	tr := newOpsTransport(t, g)
	ctx := context.Background()
	req := transport.RegistrationRequest{CC: "1", Phone: "5550001234", Method: transport.MethodSMS, Pin: "135790"}
	res, err := tr.RequestCode(ctx, req)
	if err != nil || !res.AlreadyRegistered {
		t.Fatalf("request code of a verified number: %+v, %v", res, err)
	}
	reqs := g.taken()
	if len(reqs) != 2 || reqs[1].Path != "/"+testPhoneID+"/register" {
		t.Fatalf("sent %+v, want GET the number then register", reqs)
	}
	g.fail("POST /"+testPhoneID+"/register", graphapi.Error{Message: "Two step verification PIN mismatch", Code: codePinMismatch})
	if _, err := tr.RequestCode(ctx, req); !errors.Is(err, transport.ErrInvalidValue) || !strings.Contains(err.Error(), "PIN") {
		t.Fatalf("PIN mismatch (133005): %v, want ErrInvalidValue about the PIN", err)
	}
}

// What registration refuses before any code is sent: another number than
// the transport's, and no PIN to register with.
func TestRegistrationRefusals(t *testing.T) {
	g := newGraphServer(t)
	tr := newOpsTransport(t, g)
	ctx := context.Background()
	_, err := tr.RequestCode(ctx, transport.RegistrationRequest{CC: "44", Phone: "7700900123", Method: transport.MethodSMS, Pin: "123456"})
	if !errors.Is(err, transport.ErrInvalidValue) || !strings.Contains(err.Error(), testNumber) {
		t.Errorf("another number: %v, want ErrInvalidValue naming +%s", err, testNumber)
	}
	_, err = tr.RequestCode(ctx, transport.RegistrationRequest{CC: "1", Phone: "5550001234", Method: transport.MethodSMS})
	if !errors.Is(err, transport.ErrInvalidValue) || !strings.Contains(err.Error(), "pin") {
		t.Errorf("no PIN: %v, want ErrInvalidValue about the pin", err)
	}
	if err := tr.VerifyCode(ctx, transport.VerifyRequest{CC: "1", Phone: "5550001234", Code: "123456"}); !errors.Is(err, transport.ErrInvalidValue) {
		t.Errorf("verify without a PIN: %v, want ErrInvalidValue", err)
	}
	for _, r := range g.taken() {
		if r.Method == http.MethodPost {
			t.Errorf("a refused registration sent %s %s", r.Method, r.Path)
		}
	}
}

// Media: an upload is multipart as Meta's description has it; an inbound
// medium is fetched by id with the token, checked against its size and
// sum; a missing one is ErrNoSuchItem; one too large to hand on is refused
// before its bytes are fetched.
func TestMedia(t *testing.T) {
	g := newGraphServer(t)
	tr := newOpsTransport(t, g)
	claimShard(t, tr)
	ctx := context.Background()
	jpeg := append([]byte{0xff, 0xd8, 0xff, 0xe0}, bytes.Repeat([]byte("x"), 2000)...)
	path := filepath.Join(tr.cfg.MediaDir, "0b6c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3")
	if err := os.WriteFile(path, jpeg, 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := tr.Current()
	id, err := tr.ops.MediaID(ctx, c.sender(), "0b6c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3")
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	reqs := g.taken()
	if len(reqs) != 1 || reqs[0].Path != "/"+testPhoneID+"/media" {
		t.Fatalf("upload sent %+v", reqs)
	}
	f := reqs[0].Fields
	if f["messaging_product"] != "whatsapp" || f["type"] != "image/jpeg" || f["file.content_type"] != "image/jpeg" || f["file"] != string(jpeg) {
		t.Errorf("upload fields: type %q, file type %q, %d bytes", f["type"], f["file.content_type"], len(f["file"]))
	}
	if _, err := tr.ops.MediaID(ctx, c.sender(), "11111111-2222-4333-8444-555555555555"); !errors.Is(err, transport.ErrNoSuchItem) {
		t.Errorf("an upload without its file: %v, want ErrNoSuchItem", err)
	}

	// The uploaded medium comes back as an inbound one would.
	g.reset()
	out, err := tr.Call(ctx, transport.OpMediaDownload, opBody(transport.MediaRef{ID: id}))
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	var mc transport.MediaContent
	if err := json.Unmarshal(out, &mc); err != nil || !bytes.Equal(mc.Data, jpeg) || mc.MimeType != "image/jpeg" {
		t.Fatalf("download: %d bytes of %q, %v", len(mc.Data), mc.MimeType, err)
	}
	reqs = g.taken()
	if len(reqs) != 2 || reqs[0].Path != "/"+id || reqs[0].Query != "phone_number_id="+testPhoneID || reqs[1].Path != "/lookaside/"+id {
		t.Errorf("download sent %+v, want GET /{media-id} then its URL", reqs)
	}

	if _, err := tr.Call(ctx, transport.OpMediaDownload, opBody(transport.MediaRef{ID: "999"})); !errors.Is(err, transport.ErrNoSuchItem) {
		t.Errorf("an unknown medium: %v, want ErrNoSuchItem", err)
	}
	g.mediaSize = len(jpeg) + 1
	if _, err := tr.Call(ctx, transport.OpMediaDownload, opBody(transport.MediaRef{ID: id})); err == nil || !strings.Contains(err.Error(), "bytes of") {
		t.Errorf("a short medium: %v, want the size mismatch", err)
	}
	g.reset()
	g.mediaSize = transport.MaxMediaContent + 1
	if _, err := tr.Call(ctx, transport.OpMediaDownload, opBody(transport.MediaRef{ID: id})); !errors.Is(err, transport.ErrInvalidValue) {
		t.Errorf("a medium too large: %v, want ErrInvalidValue", err)
	}
	if reqs := g.taken(); len(reqs) != 1 {
		t.Errorf("a medium too large was fetched: %+v", reqs)
	}
}
