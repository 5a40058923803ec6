package clustertest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The network skips the statuses the webhook does not want (the coreapp
// tells it, transport.EventFilter), and that follows the settings: with
// only read wanted, no sent or delivered status reaches the webhook; once
// delivered is wanted too (changed while messages flow), every message
// accepted after the change reached the coreapps gets its delivered status,
// every message gets its read status, and the network ends with nothing
// unacknowledged (no place left stale). (A delivered status of a message
// accepted before the change may arrive or not: the network pushes what it
// still holds again under the new filter.)
func TestStatusFilterFollowsSettings(t *testing.T) {
	c := New(t, Options{Shards: 2, Coreapps: 2})
	hook := startHook(t)
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q,"message":{"sent":false,"delivered":false,"read":true}}}`, hook.url))
	time.Sleep(700 * time.Millisecond) // settings reach every node within one poll
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	tos := recipients(c, 8)
	var mu sync.Mutex
	var before, after []string // accepted before the change, after it settled
	var phase atomic.Int32     // 0 before the change, 1 during, 2 after
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, to := range tos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := phase.Load()
				id, err := sendUntilAccepted(ctx, c, to, fmt.Sprintf(`{"to":%q,"text":{"body":"m%d"}}`, to, i), "")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				switch {
				case p == 0 && phase.Load() == 0:
					before = append(before, id)
				case p == 2:
					after = append(after, id)
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	time.Sleep(2 * time.Second)
	phase.Store(1)
	c.PatchSettings(fmt.Sprintf(`{"webhooks":{"url":%q,"message":{"sent":false,"delivered":true,"read":true}}}`, hook.url))
	time.Sleep(700 * time.Millisecond)
	phase.Store(2)
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d messages accepted before the change, %d after it settled", len(before), len(after))
	if len(before) == 0 || len(after) == 0 {
		t.Fatal("no messages in one of the phases")
	}
	byID := func() map[string]map[string]int {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		m := map[string]map[string]int{}
		for _, s := range hook.statuses {
			if m[s.ID] == nil {
				m[s.ID] = map[string]int{}
			}
			m[s.ID][s.Status]++
		}
		return m
	}
	c.Eventually(30*time.Second, "the wanted statuses at the webhook", func() error {
		m := byID()
		for _, id := range append(append([]string(nil), before...), after...) {
			if m[id]["read"] == 0 {
				return fmt.Errorf("message %s: no read status", id)
			}
		}
		for _, id := range after {
			if m[id]["delivered"] == 0 {
				return fmt.Errorf("message %s, accepted after the change: no delivered status", id)
			}
		}
		return nil
	})
	m := byID()
	for id, st := range m {
		if st["sent"] > 0 {
			t.Errorf("message %s: a sent status reached the webhook, which never wanted one", id)
		}
	}
	c.Eventually(10*time.Second, "nothing left unacknowledged at the network", func() error {
		for s := 0; s < c.Opts.Shards; s++ {
			if n, err := pendingEvents(c, s); err != nil || n > 0 {
				return fmt.Errorf("shard %d: %d unacknowledged (%v)", s, n, err)
			}
		}
		return nil
	})
}
