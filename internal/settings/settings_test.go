package settings

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCallbackSettingsValidate(t *testing.T) {
	if err := Defaults().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	bad := map[string]func(*Application){
		"zero backoff":           func(a *Application) { a.CallbackBackoffDelayMS = 0 },
		"max below backoff":      func(a *Application) { a.MaxCallbackBackoffDelayMS = a.CallbackBackoffDelayMS - 1 },
		"concurrency 5":          func(a *Application) { a.Webhooks.MaxConcurrentRequests = 5 },
		"relative url":           func(a *Application) { a.Webhooks.URL = "/hook" },
		"ftp url":                func(a *Application) { a.Webhooks.URL = "ftp://example.com/hook" },
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
	for name, mutate := range map[string]func(*Application){
		"pass_through":       func(a *Application) { a.PassThrough = true },
		"auto_download gifs": func(a *Application) { a.Media.AutoDownload = []string{"image", "gif"} },
	} {
		b := Defaults()
		mutate(&b)
		if err := b.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
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
