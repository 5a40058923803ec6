package cloudapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/delivery"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

const testToken = "EAAG-secret-token-value"

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFromEnv(t *testing.T) {
	base := map[string]string{"MC_CLOUDAPI_PHONE_NUMBER_ID": "106540352242922", "MC_CLOUDAPI_ACCESS_TOKEN": testToken,
		"MC_CLOUDAPI_APP_SECRET": "app-secret-value", "MC_CLOUDAPI_VERIFY_TOKEN": "verify-token-value"}
	c, err := FromEnv(envOf(base))
	if err != nil {
		t.Fatal(err)
	}
	if c.GraphVersion != "v23.0" || c.BaseURL != "https://graph.facebook.com" || c.Delivery.Throughput != 0 || c.Delivery.Unlimited || c.Delivery.Policy != delivery.PolicyResend || c.MediaDir != "/usr/local/wamedia" {
		t.Errorf("defaults: %+v", c)
	}
	for _, shown := range []string{c.String(), fmt.Sprintf("%v %+v %#v", c, c, c)} {
		for _, secret := range []string{testToken, "app-secret-value", "verify-token-value"} {
			if strings.Contains(shown, secret) {
				t.Errorf("the configuration shows a secret: %s", shown)
			}
		}
		if !strings.Contains(shown, "106540352242922") {
			t.Errorf("the configuration does not show the phone number id: %s", shown)
		}
	}

	bad := []struct{ key, value, says string }{
		{"MC_CLOUDAPI_PHONE_NUMBER_ID", "", "MC_CLOUDAPI_PHONE_NUMBER_ID is not set"},
		{"MC_CLOUDAPI_PHONE_NUMBER_ID", "+1 555", "not a phone number id"},
		{"MC_CLOUDAPI_ACCESS_TOKEN", "", "MC_CLOUDAPI_ACCESS_TOKEN is not set"},
		{"MC_CLOUDAPI_ACCESS_TOKEN", "two words", "white space"},
		{"MC_CLOUDAPI_GRAPH_VERSION", "23", "not a Graph API version"},
		{"MC_CLOUDAPI_BASE_URL", "graph.facebook.com", "not an http(s) URL"},
		{"MC_CLOUDAPI_THROUGHPUT", "1001", "0 (unlimited) to 1000"},
		{"MC_CLOUDAPI_THROUGHPUT", "-1", "0 (unlimited) to 1000"},
		{"MC_CLOUDAPI_UNKNOWN_OUTCOME", "maybe", "want resend, fail or wait"},
	}
	for _, b := range bad {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		env[b.key] = b.value
		_, err := FromEnv(envOf(env))
		if err == nil || !strings.Contains(err.Error(), b.says) {
			t.Errorf("%s=%q: error %v, want one saying %q", b.key, b.value, err, b.says)
		}
		if err != nil && strings.Contains(err.Error(), testToken) {
			t.Errorf("%s=%q: the error shows the token", b.key, b.value)
		}
	}
	env := map[string]string{}
	for k, v := range base {
		env[k] = v
	}
	env["MC_CLOUDAPI_THROUGHPUT"], env["MC_CLOUDAPI_BASE_URL"], env["MC_CLOUDAPI_UNKNOWN_OUTCOME"] = "0", "http://127.0.0.1:9/", "fail"
	c, err = FromEnv(envOf(env))
	if err != nil || !c.Delivery.Unlimited || c.BaseURL != "http://127.0.0.1:9" || c.Delivery.Policy != delivery.PolicyFail {
		t.Errorf("unlimited, a test server, fail policy: %+v, %v", c, err)
	}
}

// graphRecorder is an HTTP server standing in for the Graph API where the
// test needs only to count what arrives and answer one fixed thing.
type graphRecorder struct {
	mu      sync.Mutex
	headers []http.Header
	n       atomic.Int64
	answer  func(w http.ResponseWriter, r *http.Request)
}

func (g *graphRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.n.Add(1)
	g.mu.Lock()
	g.headers = append(g.headers, r.Header.Clone())
	g.mu.Unlock()
	g.answer(w, r)
}

func newTestTransport(t *testing.T, answer func(w http.ResponseWriter, r *http.Request)) (*Transport, *graphRecorder) {
	t.Helper()
	g := &graphRecorder{answer: answer}
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close)
	cfg, err := FromEnv(envOf(map[string]string{"MC_CLOUDAPI_PHONE_NUMBER_ID": "106540352242922", "MC_CLOUDAPI_ACCESS_TOKEN": testToken,
		"MC_CLOUDAPI_BASE_URL": srv.URL}))
	if err != nil {
		t.Fatal(err)
	}
	return New(cfg, Options{}), g
}

func okJSON(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, `{"success":true}`)
}

// TestClaimGovernsRequests: a request goes out only under a live claim,
// names the claim in its headers, and none goes out once the deadline has
// passed; Health says so.
func TestClaimGovernsRequests(t *testing.T) {
	tr, g := newTestTransport(t, okJSON)
	ctx := context.Background()
	if err := tr.Do(ctx, "GET", "/x", "", nil, nil); !errors.Is(err, transport.ErrNotConnected) {
		t.Fatalf("before Connect: %v, want ErrNotConnected", err)
	}
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 1, Epoch: 7, Node: "n1", Deadline: transport.MonoNow() - 1}); !errors.Is(err, transport.ErrDeadlinePassed) {
		t.Fatalf("Connect with a past deadline: %v", err)
	}
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 1, Epoch: 7, Node: "n1", Deadline: transport.MonoNow() + int64(300*time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	if h, _ := tr.Health(ctx); !h.Connected || h.Shard != 1 || h.Epoch != 7 {
		t.Fatalf("Health after Connect: %+v", h)
	}
	if err := tr.Do(ctx, "GET", "/x", "", nil, nil); err != nil {
		t.Fatal(err)
	}
	h := g.headers[0]
	if h.Get("X-Multiconnect-Node") != "n1" || h.Get("X-Multiconnect-Shard") != "1" || h.Get("X-Multiconnect-Epoch") != "7" || h.Get("Authorization") != "Bearer "+testToken {
		t.Errorf("request headers: %v", h)
	}
	if err := tr.Extend(ctx, 6, transport.MonoNow()+int64(time.Second), transport.Layout{}); !errors.Is(err, transport.ErrEpochMismatch) {
		t.Errorf("Extend with another epoch: %v", err)
	}
	if err := tr.Extend(ctx, 7, transport.MonoNow()+int64(200*time.Millisecond), transport.Layout{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(250 * time.Millisecond)
	before := g.n.Load()
	for _, op := range []func() error{
		func() error { return tr.Do(ctx, "GET", "/x", "", nil, nil) },
		func() error {
			_, err := tr.Send(ctx, []transport.Message{{ID: "m1", To: "1555", Type: "text", Body: []byte(`{"text":{"body":"x"}}`)}})
			return err
		},
		func() error {
			_, err := tr.Call(ctx, transport.OpMarkRead, []byte(`{"message_id":"wamid.X"}`))
			return err
		},
	} {
		if err := op(); !errors.Is(err, transport.ErrDeadlinePassed) && !errors.Is(err, transport.ErrNotConnected) {
			t.Errorf("after the deadline: %v, want ErrDeadlinePassed or ErrNotConnected", err)
		}
	}
	if n := g.n.Load(); n != before {
		t.Errorf("%d requests reached the Graph API after the claim's deadline", n-before)
	}
	if h, _ := tr.Health(ctx); h.Connected || h.LastError == "" {
		t.Errorf("Health after the deadline: %+v", h)
	}
	if err := tr.Extend(ctx, 7, transport.MonoNow()+int64(time.Second), transport.Layout{}); err == nil {
		t.Error("Extend revived a lapsed claim")
	}
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 1, Epoch: 8, Node: "n1", Deadline: transport.MonoNow() + int64(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tr.Do(ctx, "GET", "/x", "", nil, nil); !errors.Is(err, transport.ErrNotConnected) {
		t.Errorf("after Disconnect: %v", err)
	}
}

// TestRequestEndsAtTheDeadline: a request in flight when the claim lapses
// is cut at the deadline, not left to finish.
func TestRequestEndsAtTheDeadline(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	tr, _ := newTestTransport(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	ctx := context.Background()
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 0, Epoch: 1, Node: "n1", Deadline: transport.MonoNow() + int64(300*time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := tr.Do(ctx, "GET", "/slow", "", nil, nil)
	if took := time.Since(start); err == nil || took > time.Second {
		t.Fatalf("a request outliving the claim: %v after %v", err, took)
	}
}

// TestDisconnectCutsRequestsInFlight: after Disconnect returns, a request
// started before it is not left running.
func TestDisconnectCutsRequestsInFlight(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	arrived := make(chan struct{}, 1)
	tr, _ := newTestTransport(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	ctx := context.Background()
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 0, Epoch: 1, Node: "n1", Deadline: transport.MonoNow() + int64(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- tr.Do(ctx, "POST", "/x", "application/json", []byte(`{}`), nil) }()
	<-arrived
	if err := tr.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("the request in flight succeeded after Disconnect")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a request in flight outlived Disconnect")
	}
}

// TestTokenErrorInHealth: code 190 from any request shows in Health until a
// request is accepted again; the token itself never does.
func TestTokenErrorInHealth(t *testing.T) {
	var refuse atomic.Bool
	refuse.Store(true)
	tr, _ := newTestTransport(t, func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"error":{"message":"Error validating access token: Session has expired (%s)","type":"OAuthException","code":190,"error_subcode":463}}`, testToken)
			return
		}
		okJSON(w, r)
	})
	ctx := context.Background()
	if err := tr.Connect(ctx, transport.ConnectRequest{Shard: 0, Epoch: 1, Node: "n1", Deadline: transport.MonoNow() + int64(5*time.Second)}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Do(ctx, "GET", "/x", "", nil, nil); err == nil {
		t.Fatal("a refused token went unnoticed")
	}
	h, _ := tr.Health(ctx)
	if !strings.Contains(h.LastError, "code 190") || !strings.Contains(h.LastError, "MC_CLOUDAPI_ACCESS_TOKEN") || strings.Contains(h.LastError, testToken) {
		t.Errorf("Health.LastError = %q", h.LastError)
	}
	if !h.Connected {
		t.Errorf("a token error is not a lost claim: %+v", h)
	}
	refuse.Store(false)
	if err := tr.Do(ctx, "GET", "/x", "", nil, nil); err != nil {
		t.Fatal(err)
	}
	if h, _ := tr.Health(ctx); h.LastError != "" {
		t.Errorf("after a good request Health.LastError = %q", h.LastError)
	}
}

func TestCheckContacts(t *testing.T) {
	tr, g := newTestTransport(t, okJSON)
	got, err := tr.CheckContacts(context.Background(), []string{"+1 (555) 010-4001", "abc"})
	if err != nil {
		t.Fatal(err)
	}
	want := []transport.ContactResult{{Input: "+1 (555) 010-4001", Status: "valid", WAID: "15550104001"}, {Input: "abc", Status: "invalid"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("CheckContacts = %+v, want %+v", got, want)
	}
	if g.n.Load() != 0 {
		t.Error("a contact check made a request")
	}
}

func TestInfo(t *testing.T) {
	tr, _ := newTestTransport(t, okJSON)
	info, err := tr.Info(context.Background())
	if err != nil || info.Name != "cloudapi" || info.Version != "v23.0" || info.KeepaliveTimeout != KeepaliveTimeout {
		t.Errorf("Info = %+v, %v", info, err)
	}
}
