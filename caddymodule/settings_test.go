package caddymodule

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/clustertest"
)

// logLine is one JSON log line of a node (slog) or the gateway (zap).
type logLine struct {
	Level string `json:"level"`
	Msg   string `json:"msg"`
}

// linesAfter reads the JSON lines of the log at path past offset.
func linesAfter(path string, offset int64) []logLine {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return nil
	}
	var out []logLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg != "" {
			l.Level = strings.ToLower(l.Level)
			out = append(out, l)
		}
	}
	return out
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// TestApplicationSettingsThroughGateway: the body an existing On-Premises
// client's set_settings sends (on_call_pager, tcp_listen_address) is
// accepted through the gateway and read back; a field the original never
// had is refused with 1009 and changes nothing; and log_level reaches the
// logs of every master, coreapp and the gateway within 200 ms of the
// PATCH's answer (the change is committed by then; the primary master
// pushes it, README "Idle cost"),
// both ways (to debug: a debug line appears; back to info: no debug line
// follows).
func TestApplicationSettingsThroughGateway(t *testing.T) {
	cl, g := startWithRealNodes(t, clustertest.Options{Masters: 2, Coreapps: 2, Shards: 1}, "")
	token := g.loginAdmin()
	auth := func() map[string]string { return jsonHeaders(bearer(token)) }

	clientBody := `{"on_call_pager":"16315551234","tcp_listen_address":"0.0.0.0:6250","callback_persist":true,` +
		`"webhooks":{"url":""},"sent_status":false,"pass_through":false}`
	st, body := g.do("PATCH", "/v1/settings/application", clientBody, auth())
	expect(t, "the client's set_settings body", st, body, 200, 0)
	read := func() map[string]any {
		st, body := g.do("GET", "/v1/settings/application", "", bearer(token))
		var doc struct {
			Settings struct {
				Application map[string]any `json:"application"`
			} `json:"settings"`
		}
		if st != 200 || json.Unmarshal([]byte(body), &doc) != nil {
			t.Fatalf("GET /v1/settings/application: HTTP %d %s", st, body)
		}
		return doc.Settings.Application
	}
	app := read()
	if app["on_call_pager"] != "16315551234" || app["tcp_listen_address"] != "0.0.0.0:6250" ||
		app["log_level"] != "info" || app["verbose_logging"] != false {
		t.Errorf("GET after the client's PATCH: %v", app)
	}

	for _, bad := range []string{`{"shard_secret":"x"}`, `{"on_call_pager":"1","no_such_field":true}`, `{"log_level":"loud"}`} {
		st, body = g.do("PATCH", "/v1/settings/application", bad, auth())
		expect(t, "PATCH "+bad, st, body, 400, apierror.ParameterInvalid)
	}
	if after := read(); fmt.Sprint(after) != fmt.Sprint(app) {
		t.Errorf("a refused PATCH changed the settings:\nbefore %v\nafter  %v", app, after)
	}

	logs := map[string]string{"gateway": g.log}
	for _, p := range append(append([]*clustertest.Proc{}, cl.Masters...), cl.Coreapps...) {
		logs[p.Name] = p.LogPath
	}
	// waitLevel patches body and returns, per log, the offset before the
	// PATCH; every log must show a "log level set" line at level after it.
	waitLevel := func(body, level string) map[string]int64 {
		t.Helper()
		start := map[string]int64{}
		for name, path := range logs {
			start[name] = fileSize(path)
		}
		sent := time.Now()
		st, answer := g.do("PATCH", "/v1/settings/application", body, auth())
		expect(t, "PATCH "+body, st, answer, 200, 0)
		// The change is committed when the PATCH answers: the 200 ms
		// bound runs from there (a node may even be earlier).
		t0 := time.Now()
		seen := map[string]time.Duration{}
		for time.Since(t0) < 3*time.Second && len(seen) < len(logs) {
			for name, path := range logs {
				if _, ok := seen[name]; ok {
					continue
				}
				for _, l := range linesAfter(path, start[name]) {
					if l.Msg == "log level set" && l.Level == level {
						seen[name] = time.Since(t0)
					}
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		for name := range logs {
			d, ok := seen[name]
			switch {
			case !ok:
				t.Errorf("%s: no %q line at level %s within 3 s of the PATCH", name, "log level set", level)
			case d > 200*time.Millisecond:
				t.Errorf("%s: the level reached its log %v after the PATCH answered, want <= 200 ms", name, d)
			default:
				t.Logf("%s logs at %s %v after the PATCH answered (%v after it was sent)", name, level,
					d.Round(time.Millisecond), (d + t0.Sub(sent)).Round(time.Millisecond))
			}
		}
		return start
	}
	waitLevel(`{"log_level":"debug"}`, "debug")
	start := waitLevel(`{"log_level":"info"}`, "info")
	// Back at info: after each node's "log level set" line, no debug line
	// (the masters debug-log failed heartbeats and more, the gateway its
	// retries; the point is that nothing at debug passes any more).
	time.Sleep(time.Second)
	for name, path := range logs {
		past := false
		for _, l := range linesAfter(path, start[name]) {
			if l.Msg == "log level set" && l.Level == "info" {
				past = true
				continue
			}
			if past && l.Level == "debug" {
				t.Errorf("%s logged at debug after switching to info: %+v", name, l)
			}
		}
	}
	// verbose_logging logs at debug whatever log_level says.
	waitLevel(`{"log_level":"warning","verbose_logging":true}`, "debug")
	waitLevel(`{"log_level":"info","verbose_logging":false}`, "info")

	st, body = g.do("DELETE", "/v1/settings/application", "", bearer(token))
	expect(t, "DELETE", st, body, 200, 0)
	if app := read(); app["on_call_pager"] != nil || app["log_level"] != "info" {
		t.Errorf("after DELETE: %v", app)
	}
}

// TestMediaProvidersThroughGateway: providers with basic and bearer
// credentials are stored through the gateway and listed without their
// secrets; a message whose media names one is fetched by the coreapp from
// a server that requires those credentials, and the network receives the
// message with the fetched media (an upload whose bytes are the server's).
// An unknown provider, wrong credentials and a deleted provider are 1009.
func TestMediaProvidersThroughGateway(t *testing.T) {
	const (
		user, pass, tok = "media-user", "basic-secret-pw", "bearer-secret-token"
		pngBytes        = "\x89PNG\r\n\x1a\nbasic-protected-image"
		pdfBytes        = "%PDF-1.4 bearer-protected-document"
	)
	var refused atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/basic.png":
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				refused.Add(1)
				http.Error(w, "no", http.StatusUnauthorized)
				return
			}
			w.Header().Set("Content-Type", "image/png")
			w.Write([]byte(pngBytes))
		case "/bearer.pdf":
			if r.Header.Get("Authorization") != "Bearer "+tok {
				refused.Add(1)
				http.Error(w, "no", http.StatusUnauthorized)
				return
			}
			w.Header().Set("Content-Type", "application/pdf")
			w.Write([]byte(pdfBytes))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	cl, g := startWithRealNodes(t, clustertest.Options{Masters: 2, Coreapps: 2, Shards: 1}, "")
	token := g.loginAdmin()
	auth := func() map[string]string { return jsonHeaders(bearer(token)) }
	const path = "/v1/settings/application/media/providers"

	for _, p := range []string{
		`[{"name":"basic-prov","type":"www","config":{"basic":{"username":"` + user + `","password":"` + pass + `"}}}]`,
		`[{"name":"bearer-prov","type":"www","config":{"bearer":"` + tok + `"}}]`,
		`[{"name":"wrong-prov","type":"www","config":{"bearer":"not-the-token"}}]`,
	} {
		st, body := g.do("POST", path, p, auth())
		expect(t, "POST provider", st, body, 200, 0)
	}
	for bad, code := range map[string]int{
		`[{"name":"p","type":"s3","config":{"bearer":"t"}}]`:                                          apierror.ParameterInvalid,
		`[{"type":"www","config":{"bearer":"t"}}]`:                                                    apierror.ParameterMissing,
		`[{"name":"p","type":"www","config":{"bearer":"t","basic":{"username":"u","password":"p"}}}]`: apierror.ParameterInvalid,
		`{"name":"p","type":"www","config":{"bearer":"t"}}`:                                           apierror.ParameterInvalid,
	} {
		st, body := g.do("POST", path, bad, auth())
		expect(t, "POST "+bad, st, body, 400, code)
	}
	st, body := g.do("GET", path, "", bearer(token))
	expect(t, "GET providers", st, body, 200, 0)
	for _, secret := range []string{user, pass, tok, "not-the-token"} {
		if strings.Contains(body, secret) {
			t.Errorf("GET providers shows a secret: %s", body)
		}
	}
	for _, want := range []string{`"basic-prov"`, `"bearer-prov"`, `"username":"********"`, `"password":"********"`, `"bearer":"********"`} {
		if !strings.Contains(body, want) {
			t.Errorf("GET providers lacks %s: %s", want, body)
		}
	}
	if st, body := g.do("GET", path, "", bearer(token)); st != 200 || strings.Contains(body, pass) {
		t.Errorf("second GET: HTTP %d %s", st, body)
	}

	to := recipientFor(t, 0, 1, 3)
	send := func(body string) (int, string) {
		return g.do("POST", "/v1/messages", body, auth())
	}
	type sent struct{ id, media, bytes string }
	var want []sent
	for _, m := range []struct{ typ, file, prov, bytes string }{
		{"image", "/basic.png", "basic-prov", pngBytes},
		{"document", "/bearer.pdf", "bearer-prov", pdfBytes},
	} {
		st, body := send(fmt.Sprintf(`{"to":%q,"type":%q,%q:{"link":%q,"provider":{"name":%q},"caption":"a & b <c>"}}`, to, m.typ, m.typ, srv.URL+m.file, m.prov))
		if st != 201 {
			t.Fatalf("%s with provider %s: HTTP %d %s", m.typ, m.prov, st, body)
		}
		var out struct {
			Messages []struct{ ID string } `json:"messages"`
		}
		json.Unmarshal([]byte(body), &out)
		want = append(want, sent{id: out.Messages[0].ID, media: m.typ, bytes: m.bytes})
	}
	before := refused.Load()
	for what, body := range map[string]string{
		"unknown provider":  fmt.Sprintf(`{"to":%q,"type":"image","image":{"link":%q,"provider":{"name":"nobody"}}}`, to, srv.URL+"/basic.png"),
		"wrong credentials": fmt.Sprintf(`{"to":%q,"type":"image","image":{"link":%q,"provider":{"name":"wrong-prov"}}}`, to, srv.URL+"/bearer.pdf"),
	} {
		st, body := send(body)
		expect(t, what, st, body, 400, apierror.ParameterInvalid)
	}
	if refused.Load() != before+1 {
		t.Errorf("the media server refused %d requests for the two bad messages, want 1 (the wrong token)", refused.Load()-before)
	}

	// The network receives each message, with the fetched media as an
	// upload whose bytes are the protected file's, and no credentials.
	var got []clustertest.NetworkMessage
	cl.Eventually(10*time.Second, "both provider messages reach the network", func() error {
		got = cl.NetworkMessages(to)
		if len(got) < len(want) {
			return fmt.Errorf("%d of %d messages", len(got), len(want))
		}
		return nil
	})
	if len(got) != len(want) {
		t.Fatalf("the network received %d messages, want %d (the refused ones must not be sent)", len(got), len(want))
	}
	for i, w := range want {
		n := got[i]
		if n.ID != w.id {
			t.Errorf("network message %d is %s, want %s", i, n.ID, w.id)
		}
		for _, secret := range []string{user, pass, tok, "provider", srv.URL} {
			if strings.Contains(string(n.Body), secret) {
				t.Errorf("the network's copy of %s carries %q: %s", w.id, secret, n.Body)
			}
		}
		var doc map[string]map[string]any
		json.Unmarshal(n.Body, &doc)
		if doc[w.media]["caption"] != "a & b <c>" {
			t.Errorf("the network's copy of %s does not keep the caption as sent: %s", w.id, n.Body)
		}
		mediaID, _ := doc[w.media]["id"].(string)
		if mediaID == "" {
			t.Errorf("the network's copy of %s has no %s.id: %s", w.id, w.media, n.Body)
			continue
		}
		st, b := g.do("GET", "/v1/media/"+mediaID, "", bearer(token))
		if st != 200 || b != w.bytes {
			t.Errorf("media %s of %s: HTTP %d %q, want the protected file %q", mediaID, w.id, st, b, w.bytes)
		}
	}

	st, body = g.do("DELETE", path+"/basic-prov", "", bearer(token))
	expect(t, "DELETE provider", st, body, 200, 0)
	st, body = g.do("DELETE", path+"/basic-prov", "", bearer(token))
	expect(t, "DELETE it again", st, body, 404, apierror.NotFound)
	// Coreapps cache the providers per settings_version, which they poll
	// every 200 ms: a deleted provider is out of use within that.
	time.Sleep(400 * time.Millisecond)
	st, body = send(fmt.Sprintf(`{"to":%q,"type":"image","image":{"link":%q,"provider":{"name":"basic-prov"}}}`, to, srv.URL+"/basic.png"))
	expect(t, "a deleted provider", st, body, 400, apierror.ParameterInvalid)
	if st, body := g.do("GET", path, "", bearer(token)); st != 200 || strings.Contains(body, "basic-prov") || !strings.Contains(body, "bearer-prov") {
		t.Errorf("after DELETE: HTTP %d %s", st, body)
	}
}
