package changes

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// get asks the hub with seen and returns its answer and how long it took.
func get(t *testing.T, url string, seen Mark) (Mark, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := http.Get(fmt.Sprintf("%s%s?hub=%s&gen=%d", url, Route, seen.Hub, seen.Gen))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m Mark
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m, time.Since(start)
}

// The hub answers a node that has not seen its mark at once, holds one
// that has until Notify, and then answers with the next generation.
func TestHubAnswersNewMarksAtOnceAndHoldsUntilNotify(t *testing.T) {
	h := NewHub()
	srv := httptest.NewServer(h)
	defer srv.Close()

	first, d := get(t, srv.URL, Mark{})
	if first.Hub == "" || d > time.Second {
		t.Fatalf("a node that saw nothing: %+v after %v, want the hub's mark at once", first, d)
	}
	other := NewHub()
	if other.id == h.id {
		t.Fatalf("two hubs share the id %s", h.id)
	}

	go func() {
		time.Sleep(200 * time.Millisecond)
		h.Notify()
	}()
	next, d := get(t, srv.URL, first)
	if next.Hub != first.Hub || next.Gen != first.Gen+1 {
		t.Errorf("after Notify: %+v, want %s gen %d", next, first.Hub, first.Gen+1)
	}
	if d < 150*time.Millisecond || d > Hold/2 {
		t.Errorf("a node up to date was answered after %v, want when Notify came (200 ms)", d)
	}
	// A node that saw an older generation (it was reconnecting when the
	// change committed) is answered at once.
	if m, d := get(t, srv.URL, first); m != next || d > time.Second {
		t.Errorf("a node one change behind: %+v after %v, want %+v at once", m, d, next)
	}
}
