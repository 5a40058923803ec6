package settings

import (
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/openapi"
)

func TestCallbackSettingsValidate(t *testing.T) {
	if err := Defaults().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	bad := map[string]func(*Application){
		"zero backoff":           func(a *Application) { a.CallbackBackoffDelayMS = 0 },
		"max below backoff":      func(a *Application) { a.MaxCallbackBackoffDelayMS = a.CallbackBackoffDelayMS - 1 },
		"unhealthy = heartbeat":  func(a *Application) { a.UnhealthyInterval = a.HeartbeatInterval },
		"max backoff over 1 day": func(a *Application) { a.MaxCallbackBackoffDelayMS = 86400001 },
	}
	for name, mutate := range bad {
		a := Defaults()
		mutate(&a)
		if err := a.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		}
	}
	a := Defaults()
	a.Webhooks.URL = "https://hooks.example.com/wa"
	a.Webhooks.MaxConcurrentRequests = 24
	if err := a.Validate(); err != nil {
		t.Errorf("valid webhook settings refused: %v", err)
	}
}

// The original's backoff: linear in the attempt, capped.
func TestCallbackBackoff(t *testing.T) {
	a := Defaults()
	for n, want := range map[int]time.Duration{1: 3 * time.Second, 2: 6 * time.Second, 300: 900 * time.Second, 10000: 900 * time.Second} {
		if got := a.CallbackBackoff(n); got != want {
			t.Errorf("CallbackBackoff(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestWantStatus(t *testing.T) {
	a := Defaults()
	if a.WantStatus("sent") || !a.WantStatus("delivered") || !a.WantStatus("read") || !a.WantStatus("failed") {
		t.Errorf("defaults: sent %v delivered %v read %v failed %v", a.WantStatus("sent"), a.WantStatus("delivered"), a.WantStatus("read"), a.WantStatus("failed"))
	}
	a.SentStatus = true
	if !a.WantStatus("sent") {
		t.Error("sent_status true does not enable sent callbacks")
	}
}

// The original's other settings: milliseconds as numbers or strings,
// pass_through refused, auto_download types checked, unknown fields refused.
func TestOriginalSettingsDocument(t *testing.T) {
	a := Defaults()
	if err := json.Unmarshal([]byte(`{"callback_backoff_delay_ms":"2500","max_callback_backoff_delay_ms":60000,
		"garbagecollector_enable":{"media":true},"media":{"auto_download":["image","voice"]}}`), &a); err != nil {
		t.Fatal(err)
	}
	if a.CallbackBackoffDelayMS != 2500 || a.MaxCallbackBackoffDelayMS != 60000 || !a.GarbageCollector.Media ||
		!a.GarbageCollector.Messages || len(a.Media.AutoDownload) != 2 {
		t.Errorf("decoded %+v", a)
	}
	if err := a.Validate(); err != nil {
		t.Errorf("valid document refused: %v", err)
	}
	for _, doc := range []string{`{"callback_backoff_delay_ms":"soon"}`, `{"callback_backoff_delay_ms":1.5}`} {
		b := Defaults()
		if err := json.Unmarshal([]byte(doc), &b); err == nil {
			t.Errorf("%s decoded without error", doc)
		}
	}
	out, _ := json.Marshal(Defaults())
	for _, field := range []string{`"garbagecollector_enable":{"media":false,"messages":true}`, `"auto_download":["audio","document","image","sticker","video","voice"]`,
		`"notify_user_change_number":true`, `"show_security_notifications":true`, `"pass_through":false`, `"callback_backoff_delay_ms":3000`} {
		if !strings.Contains(string(out), field) {
			t.Errorf("defaults lack %s: %s", field, out)
		}
	}
}

// The checks of single fields are the OpenAPI document's ApplicationSettings
// schema: every field of the original's document passes, anything else is
// 1009 (1025 when the body is not JSON).
func TestApplicationSettingsSchema(t *testing.T) {
	good := []string{
		`{"on_call_pager":"16315551234","tcp_listen_address":"0.0.0.0:6250"}`,
		`{"log_level":"debug","verbose_logging":true}`,
		`{"callback_backoff_delay_ms":"3000","max_callback_backoff_delay_ms":900000}`,
		`{"db_garbagecollector_enable":false,"axolotl_context_striping_disabled":true}`,
		`{"webhooks":{"url":"https://hooks.example.com/wa","max_concurrent_requests":24,"message":{"sent":true}}}`,
		`{"webhooks":{"url":""}}`,
		`{"wa_id":"16315551019","pass_through":false,"sent_status":true}`,
		`{"media":{"auto_download":["image","voice"]},"garbagecollector_enable":{"media":true}}`,
	}
	def, _ := json.Marshal(map[string]any{"settings": map[string]any{"application": Defaults()}})
	if inv := openapi.Validate("ApplicationSettingsAnswer", def); inv != nil {
		t.Errorf("the defaults do not match the GET answer's schema: %s: %s", inv.Details, def)
	}
	for _, b := range good {
		if inv := openapi.Validate("ApplicationSettings", []byte(b)); inv != nil {
			t.Errorf("%s refused: %d %s", b, inv.Code, inv.Details)
		}
	}
	bad := map[string]int{
		`{"shard_secret":"x"}`:                             1009,
		`{"log_level":"loud"}`:                             1009,
		`{"verbose_logging":"yes"}`:                        1009,
		`{"pass_through":true}`:                            1009,
		`{"webhooks":{"max_concurrent_requests":5}}`:       1009,
		`{"webhooks":{"url":"/hook"}}`:                     1009,
		`{"webhooks":{"url":"ftp://example.com/hook"}}`:    1009,
		`{"webhooks":{"secret":"x"}}`:                      1009,
		`{"media":{"auto_download":["image","gif"]}}`:      1009,
		`{"heartbeat_interval":0.01}`:                      1009,
		`{"callback_backoff_delay_ms":"soon"}`:             1009,
		`{"callback_backoff_delay_ms":1.5}`:                1009,
		`{"on_call_pager":16315551234}`:                    1009,
		`{"garbagecollector_enable":{"attachments":true}}`: 1009,
		`not json`: 1025,
	}
	for b, code := range bad {
		inv := openapi.Validate("ApplicationSettings", []byte(b))
		if inv == nil || inv.Code != code {
			t.Errorf("%s: got %+v, want code %d", b, inv, code)
		}
	}
}

func TestNormalizeOlderSpellings(t *testing.T) {
	out, err := normalize([]byte(`{"db_garbagecollector_enable":false,"wa_id":"1","sent_status":true}`))
	if err != nil {
		t.Fatal(err)
	}
	a := Defaults()
	if err := json.Unmarshal(out, &a); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if a.GarbageCollector.Messages || !a.SentStatus || strings.Contains(string(out), "wa_id") {
		t.Errorf("normalized to %s", out)
	}
	if _, err := normalize([]byte(`{"db_garbagecollector_enable":false,"garbagecollector_enable":{"messages":true}}`)); !errors.Is(err, ErrInvalid) {
		t.Errorf("disagreeing spellings: %v, want ErrInvalid", err)
	}
}

func TestLogLevel(t *testing.T) {
	a := Defaults()
	if a.Level() != slog.LevelInfo {
		t.Errorf("default level %v", a.Level())
	}
	a.LogLevel = "error"
	if a.Level() != slog.LevelError || Effective(a, nil) != slog.LevelError {
		t.Errorf("error: %v", a.Level())
	}
	floor := slog.LevelInfo
	if Effective(a, &floor) != slog.LevelInfo {
		t.Errorf("MC_LOG_LEVEL=info does not keep info lines: %v", Effective(a, &floor))
	}
	a.VerboseLogging = true
	if Effective(a, &floor) != slog.LevelDebug {
		t.Errorf("verbose_logging: %v", Effective(a, &floor))
	}
	for s, want := range map[string]slog.Level{"DEBUG": slog.LevelDebug, "warn": slog.LevelWarn, "warning": slog.LevelWarn} {
		if l, err := ParseLevel(s); err != nil || l != want {
			t.Errorf("ParseLevel(%q) = %v, %v", s, l, err)
		}
	}
	if _, err := ParseLevel("loud"); err == nil {
		t.Error("ParseLevel accepted loud")
	}
}

func TestProviderMasked(t *testing.T) {
	for _, p := range []Provider{
		{Name: "b", Type: "www", Config: ProviderConfig{Basic: &BasicAuth{Username: "secret-user", Password: "secret-pass"}}},
		{Name: "t", Type: "www", Config: ProviderConfig{Bearer: "secret-token"}},
	} {
		b, _ := json.Marshal(p.Masked())
		if strings.Contains(string(b), "secret") || !strings.Contains(string(b), Masked) {
			t.Errorf("masked %s", b)
		}
		if p.Config.Basic != nil && p.Config.Basic.Password != "secret-pass" {
			t.Error("Masked changed the original")
		}
	}
}

// TestStatusCallbackWanted checks the rule the coreapp's callback writer and
// the gateway's Cloud API webhook share against the settings that shape it.
func TestStatusCallbackWanted(t *testing.T) {
	hook := Defaults()
	hook.Webhooks.URL = "https://example.com/hook"
	allOff := hook
	allOff.Webhooks.Message = WebhookMessage{}
	sentOn := hook
	sentOn.SentStatus = true
	for _, c := range []struct {
		name string
		a    Application
		want map[string]bool
	}{
		{"no webhook", Defaults(), map[string]bool{"sent": false, "delivered": false, "read": false, "failed": false, "deleted": false}},
		{"defaults", hook, map[string]bool{"sent": false, "delivered": true, "read": true, "failed": true, "deleted": true, "warning": true}},
		{"sent_status", sentOn, map[string]bool{"sent": true, "delivered": true, "read": true}},
		{"every message status off", allOff, map[string]bool{"sent": false, "delivered": false, "read": false, "failed": true}},
	} {
		for st, w := range c.want {
			if got := c.a.StatusCallbackWanted(st); got != w {
				t.Errorf("%s: %s wanted = %v, want %v", c.name, st, got, w)
			}
		}
	}
}
