package graphtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/metaspec"
)

const (
	phone  = "106540352242922"
	token  = "EAAgraphtest"
	secret = "app-secret"
)

// receiver is the webhook endpoint: it checks signatures, answers
// failFirst attempts with 500, and keeps what it acknowledged.
type receiver struct {
	t  *testing.T
	mu sync.Mutex
	// failFirst: how many more POSTs to refuse; failAlways refuses all.
	failFirst  int
	failAlways bool
	bodies     [][]byte
	badSig     int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if r.Header.Get("X-Hub-Signature-256") != Sign(secret, body) {
		rc.badSig++
		http.Error(w, "bad signature", http.StatusForbidden)
		return
	}
	if rc.failAlways || rc.failFirst > 0 {
		rc.failFirst--
		http.Error(w, "not now", http.StatusInternalServerError)
		return
	}
	rc.bodies = append(rc.bodies, body)
	w.WriteHeader(http.StatusOK)
}

// events flattens the acknowledged webhooks into statuses and messages.
type event struct {
	Kind   string // status or message
	ID     string
	Status string
	Type   string
	Raw    map[string]any
}

func (rc *receiver) events() []event {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []event
	for _, b := range rc.bodies {
		var p struct {
			Entry []struct {
				Changes []struct {
					Value struct {
						Statuses []map[string]any `json:"statuses"`
						Messages []map[string]any `json:"messages"`
					} `json:"value"`
				} `json:"changes"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(b, &p); err != nil {
			rc.t.Errorf("webhook body: %v", err)
			continue
		}
		for _, e := range p.Entry {
			for _, c := range e.Changes {
				for _, s := range c.Value.Statuses {
					out = append(out, event{Kind: "status", ID: s["id"].(string), Status: s["status"].(string), Raw: s})
				}
				for _, m := range c.Value.Messages {
					out = append(out, event{Kind: "message", ID: m["id"].(string), Type: m["type"].(string), Raw: m})
				}
			}
		}
	}
	return out
}

type fixture struct {
	srv    *Server
	http   *httptest.Server
	rc     *receiver
	client *graph.Client
}

func start(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	rc := &receiver{t: t}
	hook := httptest.NewServer(rc)
	t.Cleanup(hook.Close)
	cfg := Config{
		PhoneNumberIDs: []string{phone, "106540352242923"},
		AccessToken:    token,
		AppSecret:      secret,
		WebhookURL:     hook.URL,
		StatusDelay:    time.Millisecond,
		RetryMin:       10 * time.Millisecond,
		RetryMax:       40 * time.Millisecond,
		RetryFor:       5 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { hs.Close(); srv.Close() })
	c := graph.New(graph.Config{BaseURL: hs.URL, PhoneNumberID: phone, AccessToken: token, Timeout: 2 * time.Second})
	return &fixture{srv: srv, http: hs, rc: rc, client: c}
}

var node1 = graph.Sender{Node: "node-1", Shard: 3, Epoch: 7}

func textBody(to, text, opaque string) []byte {
	m := map[string]any{"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "text", "text": map[string]any{"body": text}}
	if opaque != "" {
		m["biz_opaque_callback_data"] = opaque
	}
	b, _ := json.Marshal(m)
	return b
}

type sendAnswer struct {
	Contacts []struct{ Input, WaID string } `json:"contacts"`
	Messages []struct{ ID string }          `json:"messages"`
}

func (f *fixture) send(who graph.Sender, body []byte) (string, error) {
	var out sendAnswer
	err := f.client.Do(context.Background(), who, http.MethodPost, "/"+phone+"/messages", "application/json", body, &out)
	if err != nil {
		return "", err
	}
	if len(out.Messages) != 1 {
		return "", fmt.Errorf("answer without a message id: %+v", out)
	}
	return out.Messages[0].ID, nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func graphErr(t *testing.T, err error) *graphapi.Error {
	t.Helper()
	var ge *graphapi.Error
	if !errors.As(err, &ge) {
		t.Fatalf("want a Graph error, got %v", err)
	}
	return ge
}

func TestSendIssuesWamidAndSignedStatusesInOrder(t *testing.T) {
	f := start(t, nil)
	wamid, err := f.send(node1, textBody("16505551234", "hello", "our-id-1"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(wamid, "wamid.") {
		t.Fatalf("wamid %q", wamid)
	}
	waitFor(t, "three statuses", func() bool { return len(f.rc.events()) == 3 })
	var got []string
	for _, e := range f.rc.events() {
		if e.ID != wamid {
			t.Errorf("status for %s, want %s", e.ID, wamid)
		}
		if e.Raw["biz_opaque_callback_data"] != "our-id-1" {
			t.Errorf("status %s without the opaque data: %v", e.Status, e.Raw)
		}
		if e.Raw["conversation"] == nil || e.Raw["pricing"] == nil {
			t.Errorf("status %s without conversation or pricing: %v", e.Status, e.Raw)
		}
		got = append(got, e.Status)
	}
	if strings.Join(got, ",") != "sent,delivered,read" {
		t.Errorf("statuses %v", got)
	}
	st := f.srv.Snapshot()
	if len(st.Messages) != 1 || st.Messages[0].Node != "node-1" || st.Messages[0].Shard != 3 || st.Messages[0].Epoch != 7 || st.Messages[0].To != "16505551234" {
		t.Errorf("recorded messages %+v", st.Messages)
	}
	if len(st.SelfCheck) != 0 || f.rc.badSig != 0 {
		t.Errorf("self check %v, bad signatures %d", st.SelfCheck, f.rc.badSig)
	}
}

// An invalid request is refused by the description's validator: the
// details are metaspec's own words for the same request.
func TestInvalidRequestRefusedByTheValidator(t *testing.T) {
	f := start(t, nil)
	for name, body := range map[string]string{
		"no recipient_type": `{"messaging_product":"whatsapp","to":"1","type":"text","text":{"body":"x"}}`,
		"unknown property":  `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text","text":{"body":"x"},"urgent":true}`,
		"image as text":     `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"image","text":{"body":"x"}}`,
		"opaque too long":   `{"messaging_product":"whatsapp","recipient_type":"individual","to":"1","type":"text","text":{"body":"x"},"biz_opaque_callback_data":"` + strings.Repeat("y", 600) + `"}`,
	} {
		_, err := f.send(node1, []byte(body))
		ge := graphErr(t, err)
		if ge.Code != 100 || ge.HTTPStatus != 400 || ge.ErrorData == nil {
			t.Errorf("%s: %+v", name, ge)
			continue
		}
		r := httptest.NewRequest(http.MethodPost, "/v23.0/"+phone+"/messages", strings.NewReader(body))
		r.Header.Set("Authorization", "Bearer "+token)
		r.Header.Set("Content-Type", "application/json")
		want := metaspec.ValidateRequest(r, []byte(body))
		if want == nil || ge.ErrorData.Details != want.Error() {
			t.Errorf("%s: details %q, the validator says %v", name, ge.ErrorData.Details, want)
		}
	}
	// An edge the description does not have.
	err := f.client.Do(context.Background(), node1, http.MethodPost, "/"+phone+"/no_such_edge", "application/json", []byte(`{}`), nil)
	if ge := graphErr(t, err); ge.Code != 100 || !strings.Contains(ge.ErrorData.Details, "no such operation") {
		t.Errorf("unknown edge: %+v %+v", ge, ge.ErrorData)
	}
	if n := len(f.srv.Snapshot().Messages); n != 0 {
		t.Errorf("%d messages accepted", n)
	}
}

func TestAccessToken(t *testing.T) {
	f := start(t, nil)
	bad := graph.New(graph.Config{BaseURL: f.http.URL, AccessToken: "wrong"})
	_, err := (&fixture{client: bad}).send(node1, textBody("1", "x", ""))
	if ge := graphErr(t, err); ge.Code != 190 || ge.HTTPStatus != 401 || graphapi.Classify(ge) != graphapi.TokenInvalid {
		t.Fatalf("wrong token: %+v", ge)
	}
	f.srv.ExpireToken()
	_, err = f.send(node1, textBody("1", "x", ""))
	if ge := graphErr(t, err); ge.Code != 190 || ge.ErrorSubcode != 463 {
		t.Fatalf("expired token: %+v", ge)
	}
	// Through the control API.
	post(t, f.http.URL+"/_test/token", `{"token":"`+token+`"}`)
	if _, err := f.send(node1, textBody("1", "x", "")); err != nil {
		t.Fatalf("after the token is renewed: %v", err)
	}
}

// post and get call the control API, wanting 200.
func post(t *testing.T, url, body string) []byte {
	t.Helper()
	return call(t, http.MethodPost, url, body)
}

func get(t *testing.T, url string) []byte {
	t.Helper()
	return call(t, http.MethodGet, url, "")
}

func call(t *testing.T, method, url, body string) []byte {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, url, resp.StatusCode, b)
	}
	return b
}

func TestThroughputLimit(t *testing.T) {
	f := start(t, func(c *Config) { c.Throughput = 5 })
	ok, limited := 0, 0
	for i := 0; i < 12; i++ {
		_, err := f.send(node1, textBody(fmt.Sprintf("1650555%04d", i), "x", ""))
		switch {
		case err == nil:
			ok++
		case graphErr(t, err).Code == graphapi.CodeThroughput:
			if graphapi.Classify(graphErr(t, err)) != graphapi.Throttle {
				t.Errorf("130429 not classified as throttle")
			}
			limited++
		default:
			t.Fatal(err)
		}
	}
	if ok < 5 || ok > 7 || limited == 0 {
		t.Fatalf("at 5/s: %d accepted, %d limited", ok, limited)
	}
	time.Sleep(450 * time.Millisecond) // two tokens back
	if _, err := f.send(node1, textBody("16505559999", "x", "")); err != nil {
		t.Fatalf("after the bucket refills: %v", err)
	}
}

func TestPairLimit(t *testing.T) {
	f := start(t, func(c *Config) { c.PairInterval = 300 * time.Millisecond })
	if _, err := f.send(node1, textBody("16505551234", "one", "")); err != nil {
		t.Fatal(err)
	}
	_, err := f.send(node1, textBody("16505551234", "two", ""))
	if ge := graphErr(t, err); ge.Code != graphapi.CodePairRate || graphapi.Classify(ge) != graphapi.PairLimit {
		t.Fatalf("second message to the same recipient: %+v", ge)
	}
	if _, err := f.send(node1, textBody("16505550000", "other", "")); err != nil {
		t.Fatalf("another recipient: %v", err)
	}
	time.Sleep(320 * time.Millisecond)
	if _, err := f.send(node1, textBody("16505551234", "two again", "")); err != nil {
		t.Fatalf("after the interval: %v", err)
	}
}

// Every error code the transport handles can be injected and reaches the
// client as that code with Meta's HTTP status.
func TestInjectedErrors(t *testing.T) {
	f := start(t, nil)
	for _, code := range []int{1, 2, 4, 100, 190, 80007, 130429, 131000, 131009, 131026, 131047, 131051, 131056} {
		f.srv.AddFault(Fault{Path: "/messages", Count: 1, Code: code})
		_, err := f.send(node1, textBody("16505551234", "x", ""))
		ge := graphErr(t, err)
		if ge.Code != code || ge.HTTPStatus != codeStatus(code) || ge.Message == "" {
			t.Errorf("code %d: got %+v", code, ge)
		}
	}
	// A bare 500 (no Graph document), through the control API.
	post(t, f.http.URL+"/_test/faults", `{"path":"/messages","count":1,"http_status":502}`)
	_, err := f.send(node1, textBody("16505551234", "x", ""))
	if ge := graphErr(t, err); ge.HTTPStatus != 502 || ge.Code != 0 || graphapi.Classify(ge) != graphapi.Retry {
		t.Errorf("bare 502: %+v", ge)
	}
	// Count is honoured: the next request is served.
	if _, err := f.send(node1, textBody("16505551234", "x", "")); err != nil {
		t.Fatalf("after the faults: %v", err)
	}
	if n := len(f.srv.Snapshot().Messages); n != 1 {
		t.Errorf("%d messages accepted, want 1", n)
	}
	// A fraction applies to about that share.
	f.srv.AddFault(Fault{Path: "/messages", Fraction: 0.5, Code: 131000})
	failed := 0
	for i := 0; i < 40; i++ {
		if _, err := f.send(node1, textBody(fmt.Sprintf("1650556%04d", i), "x", "")); err != nil {
			failed++
		}
	}
	if failed < 8 || failed > 32 {
		t.Errorf("fraction 0.5: %d of 40 failed", failed)
	}
}

func TestLatencyTimeoutAndCut(t *testing.T) {
	f := start(t, nil)
	quick := graph.New(graph.Config{BaseURL: f.http.URL, AccessToken: token, Timeout: 200 * time.Millisecond})
	qf := &fixture{client: quick}
	count := func() int { return len(f.srv.Snapshot().Messages) }

	f.srv.AddFault(Fault{Path: "/messages", Count: 1, LatencyMS: 100})
	t0 := time.Now()
	if _, err := qf.send(node1, textBody("16505550001", "x", "")); err != nil || time.Since(t0) < 100*time.Millisecond {
		t.Fatalf("latency: %v after %v", err, time.Since(t0))
	}
	for _, c := range []struct {
		mode      Mode
		processed bool
	}{{ModeTimeout, true}, {ModeTimeout, false}, {ModeCut, true}, {ModeCut, false}} {
		before := count()
		f.srv.AddFault(Fault{Path: "/messages", Count: 1, Mode: c.mode, Processed: c.processed, HoldMS: 1000})
		_, err := qf.send(node1, textBody("16505550002", "x", ""))
		var ue *graph.UnknownError
		if !errors.As(err, &ue) {
			t.Errorf("%s processed=%v: want an unknown outcome, got %v", c.mode, c.processed, err)
		}
		want := before
		if c.processed {
			want++
		}
		waitFor(t, "the request to end", func() bool {
			for _, r := range f.srv.Snapshot().Requests {
				if r.End.IsZero() {
					return false
				}
			}
			return true
		})
		if got := count(); got != want {
			t.Errorf("%s processed=%v: %d messages, want %d", c.mode, c.processed, got, want)
		}
	}
}

func TestViolations(t *testing.T) {
	f := start(t, nil)
	a := graph.Sender{Node: "a", Shard: 1, Epoch: 2}
	b := graph.Sender{Node: "b", Shard: 1, Epoch: 3}
	// Sequential sends, a then b with a newer epoch: no violation.
	for _, who := range []graph.Sender{a, a, b, b} {
		if _, err := f.send(who, textBody(fmt.Sprintf("1%d", time.Now().UnixNano()), "x", "")); err != nil {
			t.Fatal(err)
		}
	}
	var v Violations
	if err := json.Unmarshal(get(t, f.http.URL+"/_test/violations"), &v); err != nil || v.Count != 0 {
		t.Fatalf("violations %+v (%v), want none", v, err)
	}
	// a sends again with its old epoch: stale.
	if _, err := f.send(a, textBody("16505550003", "x", "")); err != nil {
		t.Fatal(err)
	}
	v = f.srv.Violations()
	if v.Count != 1 || len(v.StaleEpochs) != 1 || v.StaleEpochs[0].Older.Node != "a" || v.StaleEpochs[0].Newer.Node != "b" {
		t.Fatalf("stale: %+v", v)
	}
	// Two nodes at once on shard 2: b's request is held while c sends.
	f.srv.Reset()
	f.srv.AddFault(Fault{Path: "/messages", Count: 1, LatencyMS: 300})
	done := make(chan error)
	go func() {
		_, err := f.send(graph.Sender{Node: "b", Shard: 2, Epoch: 1}, textBody("16505550004", "x", ""))
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if _, err := f.send(graph.Sender{Node: "c", Shard: 2, Epoch: 1}, textBody("16505550005", "x", "")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	v = f.srv.Violations()
	if len(v.Overlaps) != 1 || v.Overlaps[0].Shard != 2 {
		t.Fatalf("overlap: %+v", v)
	}
}

func TestWebhookRetriesInOrderAndGivesUp(t *testing.T) {
	f := start(t, nil)
	f.rc.mu.Lock()
	f.rc.failFirst = 3
	f.rc.mu.Unlock()
	wamid, err := f.send(node1, textBody("16505551234", "x", ""))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "three statuses", func() bool { return len(f.rc.events()) == 3 })
	var got []string
	for _, e := range f.rc.events() {
		got = append(got, e.Status)
	}
	if strings.Join(got, ",") != "sent,delivered,read" {
		t.Errorf("after retries: %v for %s", got, wamid)
	}
	st := f.srv.Snapshot()
	if len(st.Deliveries) != 6 || st.Deliveries[0].Delivered || st.Deliveries[3].Attempt != 4 || !st.Deliveries[3].Delivered {
		t.Errorf("deliveries %+v", st.Deliveries)
	}

	// Never acknowledged: given up after RetryFor.
	g := start(t, func(c *Config) { c.RetryFor = 150 * time.Millisecond; c.Statuses = []string{"sent"} })
	g.rc.mu.Lock()
	g.rc.failAlways = true
	g.rc.mu.Unlock()
	if _, err := g.send(node1, textBody("16505551234", "x", "")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "giving up", func() bool {
		d := g.srv.Snapshot().Deliveries
		return len(d) > 0 && d[len(d)-1].GaveUp
	})
	if d := g.srv.Snapshot().Deliveries; len(d) < 3 {
		t.Errorf("gave up after %d attempts", len(d))
	}
}

func TestFailedStatus(t *testing.T) {
	f := start(t, nil)
	post(t, f.http.URL+"/_test/fail", `{"count":1,"code":131026}`)
	wamid, err := f.send(node1, textBody("16505551234", "x", "mine"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two statuses", func() bool { return len(f.rc.events()) == 2 })
	ev := f.rc.events()
	if ev[0].Status != "sent" || ev[1].Status != "failed" || ev[1].ID != wamid || ev[1].Raw["biz_opaque_callback_data"] != "mine" {
		t.Fatalf("events %+v", ev)
	}
	errs, _ := ev[1].Raw["errors"].([]any)
	if len(errs) != 1 || errs[0].(map[string]any)["code"].(float64) != 131026 {
		t.Fatalf("failed status errors %v", ev[1].Raw)
	}
	if len(f.srv.Snapshot().SelfCheck) != 0 {
		t.Errorf("self check: %v", f.srv.Snapshot().SelfCheck)
	}
}

func TestInboundMessagesAndMarkRead(t *testing.T) {
	f := start(t, nil)
	img := f.srv.PutMedia(phone, "image/jpeg", []byte{0xff, 0xd8, 0xff, 0xe0})
	cases := []Inbound{
		{From: "16505551234", Name: "Sheena", Type: "text", Content: json.RawMessage(`{"body":"hello"}`)},
		{From: "16505551234", Type: "image", Content: json.RawMessage(`{"id":"` + img.ID + `","mime_type":"image/jpeg","sha256":"` + img.SHA256 + `","caption":"c"}`)},
		{From: "16505551234", Type: "location", Content: json.RawMessage(`{"latitude":37.4,"longitude":-122.1,"name":"n","address":"a"}`)},
		{From: "16505551234", Type: "interactive", Content: json.RawMessage(`{"type":"button_reply","button_reply":{"id":"b1","title":"Yes"}}`),
			Fields: map[string]json.RawMessage{"context": json.RawMessage(`{"from":"` + phone + `","id":"wamid.x"}`)}},
		{From: "16505551234", Type: "reaction", Content: json.RawMessage(`{"message_id":"wamid.x","emoji":"👍"}`)},
	}
	var ids []string
	for _, in := range cases {
		id, err := f.srv.InjectInbound(in)
		if err != nil {
			t.Fatalf("%s: %v", in.Type, err)
		}
		ids = append(ids, id)
	}
	// Through the control API too.
	var out struct{ ID string }
	_ = json.Unmarshal(post(t, f.http.URL+"/_test/inbound", `{"from":"16505551234","type":"text","content":{"body":"again"}}`), &out)
	ids = append(ids, out.ID)
	waitFor(t, "the inbound webhooks", func() bool { return len(f.rc.events()) == len(ids) })
	for i, e := range f.rc.events() {
		if e.Kind != "message" || e.ID != ids[i] {
			t.Errorf("webhook %d: %+v, want message %s (in order)", i, e, ids[i])
		}
	}
	// A message that does not fit the description is refused.
	if _, err := f.srv.InjectInbound(Inbound{From: "1", Type: "text", Content: json.RawMessage(`{"body":5}`)}); err == nil {
		t.Error("an inbound text with a numeric body was accepted")
	}
	// Mark as read.
	body := []byte(`{"messaging_product":"whatsapp","status":"read","message_id":"` + ids[0] + `","typing_indicator":{"type":"text"}}`)
	var ok struct{ Success bool }
	if err := f.client.Do(context.Background(), node1, http.MethodPost, "/"+phone+"/messages", "application/json", body, &ok); err != nil || !ok.Success {
		t.Fatalf("mark read: %v %+v", err, ok)
	}
	reads := f.srv.Snapshot().Reads
	if len(reads) != 1 || reads[0].MessageID != ids[0] || !reads[0].Known || !reads[0].Typing {
		t.Errorf("reads %+v", reads)
	}
}

func TestMedia(t *testing.T) {
	f := start(t, nil)
	data := bytes.Repeat([]byte("OggS"), 100)
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	_ = w.WriteField("messaging_product", "whatsapp")
	_ = w.WriteField("type", "audio/ogg")
	fw, _ := w.CreateFormFile("file", "voice.ogg")
	_, _ = fw.Write(data)
	_ = w.Close()
	var up struct{ ID string }
	if err := f.client.Do(context.Background(), node1, http.MethodPost, "/"+phone+"/media", w.FormDataContentType(), buf.Bytes(), &up); err != nil || up.ID == "" {
		t.Fatalf("upload: %v %+v", err, up)
	}
	var info struct {
		URL, MimeType, SHA256, FileSize string
	}
	var raw map[string]any
	if err := f.client.Do(context.Background(), node1, http.MethodGet, "/"+up.ID, "", nil, &raw); err != nil {
		t.Fatal(err)
	}
	info.URL, _ = raw["url"].(string)
	info.MimeType, _ = raw["mime_type"].(string)
	info.FileSize, _ = raw["file_size"].(string)
	if info.MimeType != "audio/ogg" || info.FileSize != "400" || info.URL == "" {
		t.Fatalf("media info %v", raw)
	}
	var got []byte
	if err := f.client.Do(context.Background(), node1, http.MethodGet, info.URL, "", nil, &got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download: %v, %d bytes", err, len(got))
	}
	// The URL wants the token.
	resp, err := http.Get(info.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("download without the token: %d", resp.StatusCode)
	}
	if err := f.client.Do(context.Background(), node1, http.MethodDelete, "/"+up.ID, "", nil, nil); err != nil {
		t.Fatal(err)
	}
	err = f.client.Do(context.Background(), node1, http.MethodGet, "/"+up.ID, "", nil, nil)
	if ge := graphErr(t, err); ge.Code != 100 || ge.ErrorSubcode != 33 {
		t.Errorf("deleted media: %+v", ge)
	}
	// An upload without a file: the validator passes it (file is not
	// required there), the server refuses it.
	buf.Reset()
	w = multipart.NewWriter(&buf)
	_ = w.WriteField("messaging_product", "whatsapp")
	_ = w.Close()
	err = f.client.Do(context.Background(), node1, http.MethodPost, "/"+phone+"/media", w.FormDataContentType(), buf.Bytes(), nil)
	if ge := graphErr(t, err); ge.Code != 100 {
		t.Errorf("upload without a file: %+v", ge)
	}
}

func TestRegistrationTwoStepAndProfile(t *testing.T) {
	f := start(t, nil)
	do := func(method, path, body string, out any) error {
		var b []byte
		ct := ""
		if body != "" {
			b, ct = []byte(body), "application/json"
		}
		return f.client.Do(context.Background(), graph.Sender{}, method, path, ct, b, out)
	}
	if err := do("POST", "/"+phone+"/request_code", `{"code_method":"SMS","language":"en_US"}`, nil); err != nil {
		t.Fatal(err)
	}
	var codes map[string]string
	_ = json.Unmarshal(get(t, f.http.URL+"/_test/codes"), &codes)
	code := codes[phone]
	if len(code) != 6 {
		t.Fatalf("codes %v", codes)
	}
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	err := do("POST", "/"+phone+"/verify_code", `{"code":"`+wrong+`"}`, nil)
	if ge := graphErr(t, err); ge.Code != codeVerify {
		t.Errorf("a wrong code: %+v", ge)
	}
	if err := do("POST", "/"+phone+"/verify_code", `{"code":"`+code+`"}`, nil); err != nil {
		t.Fatalf("the right code: %v", err)
	}
	if err := do("POST", "/"+phone, `{"pin":"123456"}`, nil); err != nil {
		t.Fatalf("two-step: %v", err)
	}
	err = do("POST", "/"+phone+"/register", `{"messaging_product":"whatsapp","pin":"654321"}`, nil)
	if ge := graphErr(t, err); ge.Code != codePinMismatch {
		t.Errorf("register with another pin: %+v", ge)
	}
	if err := do("POST", "/"+phone+"/register", `{"messaging_product":"whatsapp","pin":"123456"}`, nil); err != nil {
		t.Fatalf("register: %v", err)
	}
	if err := do("POST", "/"+phone+"/whatsapp_business_profile", `{"messaging_product":"whatsapp","about":"We sell bread","email":"a@b.c","vertical":"RESTAURANT","profile_picture_handle":"4:abc"}`, nil); err != nil {
		t.Fatalf("profile: %v", err)
	}
	var prof struct{ Data []map[string]any }
	if err := do("GET", "/"+phone+"/whatsapp_business_profile?fields=about,email,vertical,profile_picture_url", "", &prof); err != nil {
		t.Fatal(err)
	}
	if len(prof.Data) != 1 || prof.Data[0]["about"] != "We sell bread" || prof.Data[0]["profile_picture_url"] == nil {
		t.Errorf("profile %+v", prof)
	}
	st := f.srv.Snapshot()
	var ops []string
	for _, r := range st.Registrations {
		ops = append(ops, fmt.Sprintf("%s:%v", r.Op, r.OK))
	}
	if strings.Join(ops, " ") != "request_code:true verify_code:false verify_code:true two_step:true register:false register:true" {
		t.Errorf("registrations %v", ops)
	}
	// A phone number the server does not serve.
	err = do("POST", "/999/register", `{"messaging_product":"whatsapp","pin":"123456"}`, nil)
	if ge := graphErr(t, err); ge.Code != 100 || ge.ErrorSubcode != 33 {
		t.Errorf("unknown number: %+v", ge)
	}
	// A bad pin is the validator's business.
	err = do("POST", "/"+phone+"/register", `{"messaging_product":"whatsapp","pin":12}`, nil)
	if ge := graphErr(t, err); ge.Code != 100 || ge.ErrorData == nil || !strings.Contains(ge.ErrorData.Details, "/pin") {
		t.Errorf("numeric pin: %+v", ge)
	}
}

func TestControlState(t *testing.T) {
	f := start(t, nil)
	if _, err := f.send(node1, textBody("16505551234", "x", "")); err != nil {
		t.Fatal(err)
	}
	var st State
	if err := json.Unmarshal(get(t, f.http.URL+"/_test/state"), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Requests) != 1 || len(st.Messages) != 1 || st.Requests[0].Status != 200 || st.Requests[0].End.IsZero() {
		t.Fatalf("state %+v", st)
	}
	post(t, f.http.URL+"/_test/reset", `{}`)
	if n := len(f.srv.Snapshot().Requests); n != 0 {
		t.Errorf("%d requests after reset", n)
	}
	resp, _ := http.Post(f.http.URL+"/_test/nothing", "application/json", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown control call: %d", resp.StatusCode)
	}
}
