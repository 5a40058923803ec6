// Package changes pushes "the cluster row moved" (settings, certificates,
// the shard map) from the primary master to every other node, so nodes
// reload within milliseconds of a change instead of polling the cluster
// row every 100-200 ms.
//
// Every change is committed by the primary master (in a fenced
// transaction), so it is the one place that knows of each. It keeps a Hub;
// every node (the other masters, the coreapps, the gateways) holds one
// long-poll request to the hub's route on the primary's internal port. The
// hub answers a waiting request as soon as a change commits, or after Hold
// with nothing new; the node then re-reads the cluster row itself, as its
// poll would have. A node thus needs no listener of its own (a gateway has
// none) and the primary needs no list of nodes.
//
// Pushes can be lost (the primary dies between COMMIT and the answer, the
// request is being re-sent): a node reloads whenever it (re)connects to a
// hub it has not seen, and keeps a slow poll of the cluster row as a
// safety net (settings.SafetyPoll, shardmap.SafetyPoll).
package changes

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/internal/cluster"
)

// Route is the hub's long-poll route on the primary master's internal port.
const Route = "/internal/changes"

// Hold is how long the hub keeps a request waiting with nothing new: an
// idle node sends one HTTP request (and no SQL statement) per Hold.
const Hold = 25 * time.Second

// Mark says which hub answered and how many changes it had seen: a node
// reloads when either differs from what it saw last.
type Mark struct {
	Hub string `json:"hub"`
	Gen int64  `json:"gen"`
}

// Hub is the primary master's side.
type Hub struct {
	id  string
	mu  sync.Mutex
	gen int64
	ch  chan struct{} // closed and replaced by Notify
}

// NewHub makes a hub with an id no other process has.
func NewHub() *Hub {
	b := make([]byte, 8)
	rand.Read(b)
	return &Hub{id: hex.EncodeToString(b), ch: make(chan struct{})}
}

// Notify answers every waiting request: call it after a COMMIT that may
// have moved the cluster row, and when the master stops being primary
// (its watchers then find the new one).
func (h *Hub) Notify() {
	h.mu.Lock()
	h.gen++
	close(h.ch)
	h.ch = make(chan struct{})
	h.mu.Unlock()
}

func (h *Hub) mark() (Mark, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Mark{Hub: h.id, Gen: h.gen}, h.ch
}

// ServeHTTP answers GET Route?hub=H&gen=N with the hub's Mark, at once if
// it differs from (H, N), else at the next Notify or after Hold.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	seen := Mark{Hub: r.URL.Query().Get("hub")}
	seen.Gen, _ = strconv.ParseInt(r.URL.Query().Get("gen"), 10, 64)
	cur, ch := h.mark()
	if cur == seen {
		t := time.NewTimer(Hold)
		defer t.Stop()
		select {
		case <-ch:
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		cur, _ = h.mark()
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(cur)
}

// Follower is a node's side: it keeps a request waiting on the primary
// master's hub and calls Reload after every change it hears of.
type Follower struct {
	DB     *sql.DB       // to find the primary master (master_lease)
	Secret func() string // the cluster secret
	// Reload re-reads what the node keeps from the cluster row. It is
	// called after each push, and on (re)connecting to a hub not seen
	// before, since a change may have been missed meanwhile.
	Reload func(ctx context.Context)
	// Lost, if set, is called when the primary master stops answering (a
	// secondary master competes for the lease at once rather than at its
	// next try).
	Lost func()
	Log  *slog.Logger
}

// retryMin and retryMax bound the wait between attempts while no primary
// master answers: each attempt reads the lease row once.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 2 * time.Second
)

// Run follows until ctx ends.
func (f *Follower) Run(ctx context.Context) {
	client := &http.Client{Timeout: Hold + 10*time.Second}
	var (
		addr  string
		seen  Mark
		retry = retryMin
	)
	for {
		var err error
		if addr == "" {
			addr, err = primaryAddr(ctx, f.DB)
		}
		if err == nil {
			var m Mark
			if m, err = f.wait(ctx, client, addr, seen); err == nil {
				retry = retryMin
				if m != seen {
					seen = m
					f.Reload(ctx)
				}
				continue
			}
			if ctx.Err() == nil {
				f.Log.Debug("change feed interrupted; finding the primary master again", "primary", addr, "err", err)
			}
			addr, seen = "", Mark{}
			if f.Lost != nil {
				f.Lost()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
		retry = min(retry*2, retryMax)
	}
}

func (f *Follower) wait(ctx context.Context, client *http.Client, addr string, seen Mark) (Mark, error) {
	u := fmt.Sprintf("http://%s%s?hub=%s&gen=%d", addr, Route, url.QueryEscape(seen.Hub), seen.Gen)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return Mark{}, err
	}
	req.Header.Set(cluster.SecretHeader, f.Secret())
	resp, err := client.Do(req)
	if err != nil {
		return Mark{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Mark{}, fmt.Errorf("%s: HTTP %d", Route, resp.StatusCode)
	}
	var m Mark
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return Mark{}, fmt.Errorf("%s: %w", Route, err)
	}
	if m.Hub == "" {
		// Not a hub's answer (a node of another version, a proxy): asking
		// again at once would spin; the caller backs off instead.
		return Mark{}, fmt.Errorf("%s: the answer names no hub", Route)
	}
	return m, nil
}

// errNoPrimary: the lease row names no live holder.
var errNoPrimary = errors.New("no primary master holds the lease")

func primaryAddr(ctx context.Context, db *sql.DB) (string, error) {
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var addr string
	err := db.QueryRowContext(qctx, `SELECT holder_addr FROM master_lease WHERE id = 1 AND expires_at > NOW(6)`).Scan(&addr)
	if errors.Is(err, sql.ErrNoRows) || err == nil && addr == "" {
		return "", errNoPrimary
	}
	if err != nil {
		return "", fmt.Errorf("find the primary master: %w", err)
	}
	return addr, nil
}
