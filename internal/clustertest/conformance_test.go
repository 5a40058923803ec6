package clustertest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/openapi"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/inbound"
)

// The walker's two users: the first admin (whose password the first login
// sets) and a USER it creates.
const (
	walkerAdminPassword = "Bench-Passw0rd!" // set by gatewayLogin
	walkerUser          = "conformance-user"
	walkerUserPassword  = "Walker-Passw0rd!"
	// The Cloud API webhook's credentials (internal/openapi/spec/70-cloudapi.yaml).
	walkerAppSecret   = "conformance-app-secret"
	walkerVerifyToken = "conformance-verify-token"
)

// TestConformance walks every operation of the OpenAPI document against a
// real cluster (MariaDB, simulated network, two masters, three coreapps)
// through the real gateway: each operation's x-conformance cases, in
// document order, each checked for its status, its error code, its body's
// shape (the operation's response schema, or Errors), and, when refused,
// that the database and the network are as they were. An operation without
// a valid and an invalid case fails. Run one operation's cases with
// -run 'TestConformance/^POST_$/^v1$/^media$' (each slash of a path is a level
// of subtests).
func TestConformance(t *testing.T) {
	ops, err := openapi.Operations()
	if err != nil {
		t.Fatal(err)
	}
	errorsSchema, err := openapi.Schema("Errors")
	if err != nil {
		t.Fatal(err)
	}
	c := New(t, Options{})
	caddy := buildCaddyBin(t)
	gp := FreePort(t)
	// The same gateway on HTTPS too, with Caddy's internal CA (tls
	// internal, a site for localhost), for the cases marked tls: the
	// gateway's own certificate routes.
	tp := FreePort(t)
	_, gw := startCaddyProc(t, c, caddy, "gateway", gp, fmt.Sprintf(`{
	admin off
	persist_config off
	skip_install_trust
	auto_https disable_redirects
}
:%[1]d {
	multiconnect {
		bcrypt_cost 4
		cloudapi_app_secret %[3]s
		cloudapi_verify_token %[4]s
	}
}
https://localhost:%[2]d {
	tls internal
	multiconnect {
		bcrypt_cost 4
		cloudapi_app_secret %[3]s
		cloudapi_verify_token %[4]s
	}
}
`, gp, tp, walkerAppSecret, walkerVerifyToken))
	// A media server for messages whose media a provider fetches: it
	// answers only the provider's bearer token.
	media := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer conformance-media-token" {
			http.Error(rw, "who are you", http.StatusUnauthorized)
			return
		}
		rw.Header().Set("Content-Type", "video/mp4")
		rw.Write([]byte("\x00\x00\x00\x18ftypmp42 conformance video"))
	}))
	t.Cleanup(media.Close)
	w := &walker{c: c, gw: gw, hc: &http.Client{Timeout: 30 * time.Second}, errors: errorsSchema,
		gwTLS: fmt.Sprintf("https://localhost:%d", tp),
		// The walker checks answers, not the chain: TestCertificatesOverHTTPS
		// checks that the CA external/ca returns verifies what is served.
		hcTLS: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", tp))
			}}},
		fixed: map[string]any{"provider-link": media.URL + "/v.mp4"}}
	// $now: the current Unix time as Meta writes timestamps, so a webhook
	// case is fresh whenever the walker runs.
	w.fixed["now"] = strconv.FormatInt(time.Now().Unix(), 10)
	w.tokens = map[string]string{"admin": gatewayLogin(t, gw)}
	// The walker's own check: the fingerprint sees a change (the user
	// created next), or "changed nothing" would prove nothing.
	before, err := c.Fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	if st, b, err := w.do("gateway", "admin", "", http.MethodPost, "/v1/users", nil,
		[]byte(fmt.Sprintf(`{"username":%q,"password":%q,"role":"USER"}`, walkerUser, walkerUserPassword)), "application/json"); err != nil || st != http.StatusCreated {
		t.Fatalf("creating the walker's USER: HTTP %d %s %v", st, b, err)
	}
	if after, err := c.Fingerprint(); err != nil || after == before {
		t.Fatalf("the fingerprint did not change when a user was created (%v):\n%s", err, after)
	}
	st, b, err := w.do("gateway", "user-basic", "", http.MethodPost, "/v1/users/login", nil, nil, "")
	var login struct {
		Users []struct {
			Token string `json:"token"`
		} `json:"users"`
	}
	if err != nil || st != http.StatusOK || json.Unmarshal(b, &login) != nil || len(login.Users) != 1 {
		t.Fatalf("the walker's USER logs in: HTTP %d %s %v", st, b, err)
	}
	w.tokens["user"] = login.Users[0].Token

	t.Run("every node answers errors in the error shape", func(t *testing.T) {
		w.checkErrorShapes(t)
	})
	for _, op := range ops {
		cases, err := openapi.Cases(op)
		if err != nil {
			t.Error(err)
			continue
		}
		var valid, invalid bool
		for _, cs := range cases {
			valid = valid || (cs.Status > 0 && cs.Status < 400)
			invalid = invalid || cs.Status >= 400
		}
		if !valid || !invalid {
			t.Errorf("%s %s: x-conformance needs at least one valid and one invalid case (valid %v, invalid %v)", op.Method, op.Path, valid, invalid)
		}
		for _, cs := range cases {
			t.Run(op.Method+" "+op.Path+"/"+cs.Name, func(t *testing.T) {
				w.run(t, op, cs)
			})
		}
	}
}

type walker struct {
	gwTLS string       // the gateway's HTTPS site (cases with tls: true)
	hcTLS *http.Client // dials it on loopback whatever localhost resolves to
	// fixed are values every case may name as "$name": provider-link, a
	// file on the walker's media server (bearer conformance-media-token).
	fixed  map[string]any
	c      *Cluster
	gw     string
	hc     *http.Client
	tokens map[string]string
	errors *jsonschema.Schema
}

// run sends one case and checks its answer.
func (w *walker) run(t *testing.T, op openapi.Operation, cs openapi.Case) {
	captured := map[string]any{}
	for k, v := range w.fixed {
		captured[k] = v
	}
	for i, st := range cs.Setup {
		if err := w.step(st, captured); err != nil {
			t.Fatalf("setup step %d (%s %s): %v", i+1, st.Method, st.Path, err)
		}
	}
	p := op.Path
	for k, v := range cs.Params {
		p = strings.ReplaceAll(p, "{"+k+"}", url.PathEscape(fmt.Sprint(substitute(v, captured))))
	}
	if strings.Contains(p, "{") {
		t.Fatalf("path %s: a parameter has no value in params", p)
	}
	body, ctype, err := caseBody(cs.Body, cs.Raw, cs.RawBase64, cs.ContentType, captured)
	if cs.Multipart != nil {
		body, ctype, err = multipartBody(*cs.Multipart)
	}
	if err != nil {
		t.Fatal(err)
	}
	bearer := ""
	if cs.Bearer != "" {
		bearer = fmt.Sprint(substitute(cs.Bearer, captured))
	}
	query := substituteQuery(cs.Query, captured)

	var before string
	if cs.Status >= 400 {
		if before, err = w.quiet(); err != nil {
			t.Fatal(err)
		}
	}
	target := "gateway"
	if cs.TLS {
		target = "gateway-tls"
	}
	extra := http.Header{}
	switch cs.HubSignature {
	case "":
	case "sign":
		extra.Set(inbound.SignatureHeader, inbound.Sign([]byte(walkerAppSecret), body))
	default:
		extra.Set(inbound.SignatureHeader, cs.HubSignature)
	}
	status, answer, hdr, err := w.send(target, roleOf(cs.Role), bearer, op.Method, p, query, body, ctype, extra)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s %s -> HTTP %d %s", op.Method, p, status, truncate(answer, 300))
	if status != cs.Status {
		t.Errorf("HTTP %d, want %d: %s", status, cs.Status, truncate(answer, 500))
	}
	isJSON := isJSONType(hdr.Get("Content-Type"))
	switch {
	case status >= 400:
		if !isJSON {
			t.Errorf("error answer with Content-Type %q, want application/json", hdr.Get("Content-Type"))
		}
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(answer))
		if err != nil {
			t.Fatalf("error answer is not JSON: %v", err)
		}
		if inv := openapi.ValidateValue(w.errors, v); inv != nil {
			t.Errorf("error answer does not match Errors: %s", inv.Details)
		}
		var e struct {
			Errors []struct {
				Code int `json:"code"`
			} `json:"errors"`
		}
		if cs.Code != 0 && (json.Unmarshal(answer, &e) != nil || len(e.Errors) == 0 || e.Errors[0].Code != cs.Code) {
			t.Errorf("errors[0].code is not %d: %s", cs.Code, truncate(answer, 500))
		}
	case status == cs.Status:
		s, ok, err := openapi.ResponseSchema(op, status)
		switch {
		case err != nil:
			t.Error(err)
		case !isJSON:
			// Another media type (a download, a text format): it must be
			// one the document gives this answer.
			mts, err := openapi.ResponseMediaTypes(op, status)
			if err != nil {
				t.Fatal(err)
			}
			if mt, _, _ := mime.ParseMediaType(hdr.Get("Content-Type")); len(answer) > 0 && !slices.Contains(mts, mt) && !slices.Contains(mts, "*/*") {
				t.Errorf("answer with Content-Type %q; the document gives %v", hdr.Get("Content-Type"), mts)
			}
		case ok && len(answer) > 0:
			v, err := jsonschema.UnmarshalJSON(bytes.NewReader(answer))
			if err != nil {
				t.Fatalf("answer is not JSON: %v", err)
			}
			if inv := openapi.ValidateValue(s, v); inv != nil {
				t.Errorf("answer does not match the operation's %d schema: %s", status, inv.Details)
			}
		case ok:
			t.Errorf("empty answer; the document describes a JSON body for %d", status)
		}
	}
	if cs.Status >= 400 {
		// Give anything the request set off (a queued write, a message to
		// the network) time to land before comparing.
		time.Sleep(200 * time.Millisecond)
		after, err := w.c.Fingerprint()
		if err != nil {
			t.Fatal(err)
		}
		if after != before {
			t.Errorf("a refused request changed the cluster's state:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	}
}

// quiet waits until the state stops moving (the previous case's effects,
// such as a message being sent, have landed) and returns its fingerprint.
func (w *walker) quiet() (string, error) {
	prev, err := w.c.Fingerprint()
	if err != nil {
		return "", err
	}
	// Three equal readings over 300 ms: a background effect (a contact
	// check answered later, a message being sent) has had time to start.
	deadline := time.Now().Add(10 * time.Second)
	for same := 0; same < 2; {
		time.Sleep(150 * time.Millisecond)
		cur, err := w.c.Fingerprint()
		if err != nil {
			return "", err
		}
		if cur == prev {
			same++
		} else {
			same = 0
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("the cluster's state kept changing for 10 s before the case:\n%s\n%s", prev, cur)
		}
		prev = cur
	}
	return prev, nil
}

// step makes one setup request and captures what it names.
func (w *walker) step(st openapi.Step, captured map[string]any) error {
	p := st.Path
	for k, v := range captured {
		p = strings.ReplaceAll(p, "{"+k+"}", url.PathEscape(fmt.Sprint(v)))
	}
	body, ctype, err := caseBody(st.Body, st.Raw, st.RawBase64, st.ContentType, captured)
	if err != nil {
		return err
	}
	target := st.Target
	if target == "" {
		target = "gateway"
	}
	status, answer, _, err := w.send(target, roleOf(st.Role), "", st.Method, p, substituteQuery(st.Query, captured), body, ctype)
	if err != nil {
		return err
	}
	if (st.Status != 0 && status != st.Status) || (st.Status == 0 && (status < 200 || status > 299)) {
		return fmt.Errorf("HTTP %d: %s", status, truncate(answer, 500))
	}
	if len(st.Capture) == 0 {
		return nil
	}
	var doc any
	if err := json.Unmarshal(answer, &doc); err != nil {
		return fmt.Errorf("answer is not JSON, nothing to capture: %w", err)
	}
	for name, ptr := range st.Capture {
		v, err := pointer(doc, ptr)
		if err != nil {
			return fmt.Errorf("capture %s: %w", name, err)
		}
		captured[name] = v
	}
	return nil
}

func (w *walker) do(target, role, bearer, method, p string, query url.Values, body []byte, ctype string) (int, []byte, error) {
	st, b, _, err := w.send(target, role, bearer, method, p, query, body, ctype)
	return st, b, err
}

// send makes one request to the gateway (with role's credentials) or the
// simulated network's API, with the headers of extra.
func (w *walker) send(target, role, bearer, method, p string, query url.Values, body []byte, ctype string, extra ...http.Header) (int, []byte, http.Header, error) {
	base, hc := w.gw, w.hc
	switch target {
	case "gateway":
	case "gateway-tls":
		base, hc = w.gwTLS, w.hcTLS
		target = "gateway"
	case "simnet":
		base = "http://" + w.c.SimnetHTTP
	default:
		return 0, nil, nil, fmt.Errorf("unknown target %q (gateway or simnet)", target)
	}
	u := base + p
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for _, h := range extra {
		for k, vs := range h {
			req.Header[k] = vs
		}
	}
	if target == "gateway" {
		switch {
		case bearer != "":
			req.Header.Set("Authorization", "Bearer "+bearer)
		case role == "none":
		case role == "admin-basic":
			req.SetBasicAuth("admin", walkerAdminPassword)
		case role == "user-basic":
			req.SetBasicAuth(walkerUser, walkerUserPassword)
		case w.tokens[role] != "":
			req.Header.Set("Authorization", "Bearer "+w.tokens[role])
		default:
			return 0, nil, nil, fmt.Errorf("unknown role %q (admin, user, none, admin-basic, user-basic)", role)
		}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header, err
}

func roleOf(r string) string {
	if r == "" {
		return "admin"
	}
	return r
}

// caseBody is the bytes and content type of a case's or step's body.
func caseBody(body json.RawMessage, raw *string, rawBase64, ctype string, captured map[string]any) ([]byte, string, error) {
	var b []byte
	switch {
	case rawBase64 != "":
		var err error
		if b, err = base64.StdEncoding.DecodeString(rawBase64); err != nil {
			return nil, "", fmt.Errorf("raw_base64: %w", err)
		}
	case raw != nil:
		b = []byte(*raw)
	case body != nil:
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			return nil, "", err
		}
		b, _ = json.Marshal(substitute(v, captured))
	default:
		return nil, ctype, nil
	}
	if ctype == "" {
		ctype = "application/json"
	}
	return b, ctype, nil
}

// multipartBody is a multipart/form-data body holding m's one file.
func multipartBody(m openapi.Multipart) ([]byte, string, error) {
	content, err := base64.StdEncoding.DecodeString(m.ContentBase64)
	if err != nil {
		return nil, "", fmt.Errorf("multipart content_base64: %w", err)
	}
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", fmt.Sprintf(`form-data; name=%q; filename=%q`, m.Field, m.Filename))
	h.Set("Content-Type", m.ContentType)
	part, err := mw.CreatePart(h)
	if err != nil {
		return nil, "", err
	}
	part.Write(content)
	if err := mw.Close(); err != nil {
		return nil, "", err
	}
	return buf.Bytes(), mw.FormDataContentType(), nil
}

var capturedName = regexp.MustCompile(`^\$([A-Za-z0-9_-]+)$`)

// substitute replaces every string "$name" in v by the captured value.
func substitute(v any, captured map[string]any) any {
	switch x := v.(type) {
	case string:
		if m := capturedName.FindStringSubmatch(x); m != nil {
			if c, ok := captured[m[1]]; ok {
				return c
			}
		}
		return x
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = substitute(e, captured)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = substitute(e, captured)
		}
		return out
	}
	return v
}

func substituteQuery(q map[string]string, captured map[string]any) url.Values {
	if len(q) == 0 {
		return nil
	}
	out := url.Values{}
	for k, v := range q {
		out.Set(k, fmt.Sprint(substitute(v, captured)))
	}
	return out
}

// pointer resolves a JSON pointer (RFC 6901) in a decoded document.
func pointer(doc any, ptr string) (any, error) {
	if ptr == "" {
		return doc, nil
	}
	if !strings.HasPrefix(ptr, "/") {
		return nil, fmt.Errorf("JSON pointer %q must start with /", ptr)
	}
	cur := doc
	for _, tok := range strings.Split(ptr[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch x := cur.(type) {
		case map[string]any:
			v, ok := x[tok]
			if !ok {
				return nil, fmt.Errorf("%s: no member %q", ptr, tok)
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(x) {
				return nil, fmt.Errorf("%s: no element %q", ptr, tok)
			}
			cur = x[i]
		default:
			return nil, fmt.Errorf("%s: %q is below a scalar", ptr, tok)
		}
	}
	return cur, nil
}

func isJSONType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// checkErrorShapes sends requests no route takes to every node, through the
// gateway and straight to the masters' and coreapps' internal ports (with
// and without the cluster secret): each answer must be the error document,
// as JSON, never a plain-text 404 or 405.
func (w *walker) checkErrorShapes(t *testing.T) {
	type probe struct {
		method, path string
		status, code int
	}
	check := func(where string, status int, hdr http.Header, body []byte, p probe) {
		t.Helper()
		var e struct {
			Errors []struct {
				Code int `json:"code"`
			} `json:"errors"`
		}
		if status != p.status || !isJSONType(hdr.Get("Content-Type")) || json.Unmarshal(body, &e) != nil || len(e.Errors) == 0 || e.Errors[0].Code != p.code {
			t.Errorf("%s %s %s: HTTP %d %q %s, want %d with code %d", where, p.method, p.path, status, hdr.Get("Content-Type"), truncate(body, 200), p.status, p.code)
		}
	}
	for _, p := range []probe{
		{"GET", "/nothing", 404, 1006},
		{"GET", "/v1/nothing", 404, 1006},
		{"GET", "/v1/settings/nothing", 404, 1006}, // forwarded to the primary master
		{"PUT", "/v1/support", 405, 1025},          // the master has GET only
		{"GET", "/v1/contacts", 405, 1025},         // a coreapp has POST only
		{"GET", "/v1/media/a/b", 404, 1006},        // no such media route on a coreapp
		{"PATCH", "/v1/users/login", 405, 1025},    // the gateway's own
		{"POST", "/v1/health", 405, 1025},
	} {
		st, b, hdr, err := w.send("gateway", "admin", "", p.method, p.path, nil, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		check("gateway", st, hdr, b, p)
	}
	nodes := append(append([]*Proc(nil), w.c.Masters...), w.c.Coreapps...)
	for _, n := range nodes {
		for _, p := range []probe{
			{"GET", "/nothing", 404, 1006},
			{"GET", "/v1/nothing", 404, 1006},
			{"DELETE", "/internal/health", 405, 1025},
			{"GET", "/v1//x/../nothing", 404, 1006},
		} {
			for _, member := range []bool{true, false} {
				req, _ := http.NewRequest(p.method, "http://"+n.Addr+p.path, nil)
				want := p
				if member {
					req.Header.Set(cluster.SecretHeader, w.c.Secret)
				} else {
					want.status, want.code = 403, 1005 // strangers learn nothing about routes
				}
				resp, err := w.hc.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				check(fmt.Sprintf("%s (member %v)", n.Name, member), resp.StatusCode, resp.Header, b, want)
			}
		}
	}
}
