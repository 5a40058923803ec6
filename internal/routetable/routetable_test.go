package routetable

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		tmpl, p string
		ok      bool
		id      string
	}{
		{"/v1/media", "/v1/media", true, ""},
		{"/v1/media", "/v1/media/x", false, ""},
		{"/v1/media/{media-id}", "/v1/media/abc", true, "abc"},
		{"/v1/media/{media-id}", "/v1/media/", false, ""},
		{"/v1/media/{media-id}", "/v1/media", false, ""},
		{"/v1/media/{media-id}", "/v1/media/a/b", false, ""},
		{"/v1/media/{media-id}", "/v1/medix/a", false, ""},
	} {
		params, ok := Match(c.tmpl, c.p)
		if ok != c.ok || params["media-id"] != c.id {
			t.Errorf("Match(%s, %s) = %v %v", c.tmpl, c.p, params, ok)
		}
	}
}

// Unrouted requests get the API's error shape, never ServeMux's text.
func TestUnroutedAnswersInTheErrorShape(t *testing.T) {
	m := New()
	m.HandleFunc("GET /v1/support", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) })
	for _, c := range []struct {
		method, path string
		status, code int
	}{
		{"GET", "/v1/support", 200, 0},
		{"PUT", "/v1/support", 405, 1025},
		{"GET", "/v1/nothing", 404, 1006},
		{"GET", "/v1//support", 404, 1006},
		{"GET", "/v1/x/../support", 404, 1006},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(c.method, "http://x"+c.path, nil)
		req.URL.Path = c.path
		m.ServeHTTP(rec, req)
		if rec.Code != c.status {
			t.Errorf("%s %s: %d %s", c.method, c.path, rec.Code, rec.Body)
			continue
		}
		if c.code == 0 {
			continue
		}
		var e struct {
			Errors []struct {
				Code int `json:"code"`
			} `json:"errors"`
		}
		if rec.Header().Get("Content-Type") != "application/json" || json.Unmarshal(rec.Body.Bytes(), &e) != nil || len(e.Errors) != 1 || e.Errors[0].Code != c.code {
			t.Errorf("%s %s: %s %q", c.method, c.path, rec.Header().Get("Content-Type"), rec.Body)
		}
	}
	if got := m.Routes(); len(got) != 1 || got[0] != (Route{"GET", "/v1/support"}) {
		t.Errorf("Routes() = %v", got)
	}
}
