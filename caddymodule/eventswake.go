package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/pause"
)

// eventsStoredPath is the coreapp's route that passes "new webhook rows for
// shard N" to its transport plugin (transport.OpEventsStored).
const eventsStoredPath = "/internal/events-stored"

// eventsWaker tells a shard's primary coreapp, after the webhook route
// committed rows for the shard, that they are there: the Cloud API plugin
// reads them then, instead of polling cloudapi_inbound (it keeps a slow
// safety poll for a wake lost here). Per shard at most one request is in
// flight; wakes that come meanwhile make one more after it, at least
// wakeGap after the previous one, so a stream of webhooks costs the coreapp
// at most one request per shard per wakeGap.
type eventsWaker struct {
	v      *clusterView
	ctx    context.Context
	client *http.Client

	mu     sync.Mutex
	shards map[int]*shardWake
}

// shardWake is one shard's state: busy while a request is in flight,
// again when another wake came during it.
type shardWake struct{ busy, again bool }

func newEventsWaker(ctx context.Context, v *clusterView) *eventsWaker {
	return &eventsWaker{v: v, ctx: ctx, shards: map[int]*shardWake{},
		client: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}}}
}

// wake tells each shard's primary, in the background.
func (w *eventsWaker) wake(shards []int) {
	for _, s := range shards {
		w.mu.Lock()
		st := w.shards[s]
		if st == nil {
			st = &shardWake{}
			w.shards[s] = st
		}
		if st.busy {
			st.again = true
			w.mu.Unlock()
			continue
		}
		st.busy = true
		w.mu.Unlock()
		go w.run(s, st)
	}
}

// wakeGap spaces one shard's wakes while webhooks keep coming (status
// webhooks at hundreds per second under load): the plugin's read after a
// wake takes every row committed before it, so one wake per gap is enough,
// and what it adds to an event's way is at most the gap, under load only.
const wakeGap = 20 * time.Millisecond

func (w *eventsWaker) run(shard int, st *shardWake) {
	for {
		sent := time.Now()
		w.send(shard)
		w.mu.Lock()
		if !st.again {
			st.busy = false
			w.mu.Unlock()
			return
		}
		st.again = false
		w.mu.Unlock()
		if d := wakeGap - time.Since(sent); d > 0 {
			if !pause.For(w.ctx, d) {
				w.mu.Lock()
				st.busy = false
				w.mu.Unlock()
				return
			}
		}
	}
}

// send tells shard's primary as the shard map names it; when that node is
// unreachable or is not the primary any more (1018), the map is reloaded
// and the primary it names then is told. Failing that, the plugin finds
// the rows at its safety poll, or on connecting if a failover is under way.
func (w *eventsWaker) send(shard int) {
	for attempt := 0; attempt < 2; attempt++ {
		m := w.v.currentMap()
		if m == nil || shard >= len(m.Entries) || m.Entries[shard].NodeID == "" {
			return
		}
		node := m.Entries[shard].NodeID
		failedAt := time.Now()
		err := w.post(node, shard)
		if err == nil {
			return
		}
		if attempt == 1 || w.ctx.Err() != nil {
			w.v.log.Warn("cloudapi webhook: telling the shard's primary coreapp failed; its plugin reads the events at its safety poll",
				zap.Int("shard", shard), zap.String("coreapp", node), zap.Error(err))
			return
		}
		w.v.refreshMap(w.ctx, failedAt)
	}
}

func (w *eventsWaker) post(node string, shard int) error {
	req, err := http.NewRequestWithContext(w.ctx, http.MethodPost, "http://"+node+eventsStoredPath, strings.NewReader(fmt.Sprintf(`{"shard":%d}`, shard)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(cluster.SecretHeader, w.v.secretValue())
	resp, err := w.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10)) // so the connection is kept
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: HTTP %d", eventsStoredPath, resp.StatusCode)
	}
	return nil
}
