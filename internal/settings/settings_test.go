package settings

import (
	"errors"
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
