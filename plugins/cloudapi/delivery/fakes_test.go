package delivery

// The engine's own logic is tested with a fake Poster (scripted answers
// per message) and a Store in memory. The real network's tests are the
// plugin's end-to-end tests against the Graph API test server, and
// TestFaultsTable here (a real graph client and the test server); the
// MySQL Store has its own test on a private MariaDB (store_test.go).

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// post is one request the fake received.
type post struct {
	ID, To string
	At     time.Time
}

// fakePoster answers each message with its script (one answer per
// attempt, the last repeated); no script: a wamid.
type fakePoster struct {
	mu      sync.Mutex
	script  map[string][]error
	byTo    map[string][]error // scripts per recipient, used when no id script
	all     []error            // one script for every request, before the others
	posts   []post
	latency time.Duration
}

func newFakePoster() *fakePoster {
	return &fakePoster{script: map[string][]error{}, byTo: map[string][]error{}}
}

func (f *fakePoster) Post(ctx context.Context, m Outgoing) (string, error) {
	at := time.Now() // when the request arrives
	if f.latency > 0 {
		time.Sleep(f.latency)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.posts = append(f.posts, post{m.ID, m.To, at})
	if len(f.all) > 0 {
		err := f.all[0]
		if len(f.all) > 1 {
			f.all = f.all[1:]
		}
		if err != nil {
			return "", err
		}
		return "wamid." + m.ID, nil
	}
	s := f.script[m.ID]
	key := &f.script
	if len(s) == 0 {
		s, key = f.byTo[m.To], &f.byTo
	}
	if len(s) > 0 {
		err := s[0]
		if len(s) > 1 {
			if key == &f.script {
				f.script[m.ID] = s[1:]
			} else {
				f.byTo[m.To] = s[1:]
			}
		}
		if err != nil {
			return "", err
		}
	}
	return "wamid." + m.ID, nil
}

func (f *fakePoster) sent() []post {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]post(nil), f.posts...)
}

func (f *fakePoster) count(id string) int {
	n := 0
	for _, p := range f.sent() {
		if p.ID == id {
			n++
		}
	}
	return n
}

func gerr(code, status int) *graphapi.Error {
	return &graphapi.Error{Code: code, HTTPStatus: status, Message: fmt.Sprintf("code %d", code), Type: "OAuthException"}
}

var errUnknown = &graph.UnknownError{Op: "POST /1/messages", Err: errors.New("context deadline exceeded (Client.Timeout exceeded while awaiting headers)")}

// memStore is Store in memory; statuses are set by the test (what the
// webhook would have stored).
type memStore struct {
	mu     sync.Mutex
	recs   map[string]Record
	status map[string]Seen
}

func newMemStore() *memStore {
	return &memStore{recs: map[string]Record{}, status: map[string]Seen{}}
}

func (s *memStore) Load(_ context.Context, ids []string) (map[string]Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]Record{}
	for _, id := range ids {
		if r, ok := s.recs[id]; ok {
			out[id] = r
		}
	}
	return out, nil
}

func (s *memStore) Begin(_ context.Context, m Outgoing, node string, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[m.ID]
	if !ok {
		r = Record{ID: m.ID, Recipient: m.To, FirstAt: at}
	}
	r.State, r.Attempts, r.Node, r.LastAt = StateSending, r.Attempts+1, node, at
	s.recs[m.ID] = r
	return nil
}

func (s *memStore) Finish(_ context.Context, id string, st State, wamid string, gerr *graphapi.Error, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.recs[id]
	r.State, r.Err, r.LastAt = st, gerr, at
	if wamid != "" {
		r.WAMID = wamid
	}
	s.recs[id] = r
	return nil
}

func (s *memStore) StatusSeen(_ context.Context, id string) (Seen, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status[id], nil
}

func (s *memStore) setStatus(id, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status[id] = Seen{Found: true, Status: status, WAMID: "wamid." + id}
}

func (s *memStore) rec(id string) Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recs[id]
}
