package settings

import (
	"context"
	"log/slog"
	"testing"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/mariadbtest"
)

// Moved wakes a waiter at every move of settings_version, the
// application document's and any other row's (here the media
// providers'), and not at a refresh that finds nothing new; OnChange
// runs only when the application document changed.
func TestCacheMovedOnAnyRow(t *testing.T) {
	ctx := context.Background()
	db := mariadbtest.Migrated(t, "settings")
	if err := cluster.Init(ctx, db, 1); err != nil {
		t.Fatal(err)
	}
	c := NewCache(db, 0, slog.New(slog.DiscardHandler))
	var changes []Application
	c.OnChange(func(a Application) { changes = append(changes, a) })
	refresh := func() {
		t.Helper()
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	if c.Loaded() {
		t.Error("Loaded before any read: Get returns the defaults, not the cluster's settings")
	}
	refresh() // the first read
	if !c.Loaded() {
		t.Error("not Loaded after a successful Refresh")
	}

	w := c.Moved()
	refresh()
	if closed(w) {
		t.Error("Moved closed by a refresh that found settings_version where it was")
	}
	if err := storeProviders(ctx, db, []Provider{}); err != nil {
		t.Fatal(err)
	}
	refresh()
	if !closed(w) {
		t.Error("Moved not closed after the media providers' row changed")
	}
	if len(changes) != 0 {
		t.Errorf("OnChange ran %d times for a row outside the application document", len(changes))
	}

	w = c.Moved()
	if closed(w) {
		t.Fatal("Moved returned a channel already closed")
	}
	a, err := Patch(ctx, db, []byte(`{"heartbeat_interval": 7}`))
	if err != nil {
		t.Fatal(err)
	}
	refresh()
	if !closed(w) {
		t.Error("Moved not closed after the application document changed")
	}
	if len(changes) != 1 || changes[0].HeartbeatInterval != a.HeartbeatInterval || c.Get().HeartbeatInterval != a.HeartbeatInterval {
		t.Errorf("after the patch: OnChange saw %+v, Get has heartbeat %v; want one change to %v", changes, c.Get().HeartbeatInterval, a.HeartbeatInterval)
	}
}
