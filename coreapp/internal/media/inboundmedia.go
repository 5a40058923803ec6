package media

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Inbound media of a network that keeps them itself (the Cloud API: an
// inbound message names a media id, which the network serves for a
// limited time) are fetched through the plugin (transport.OpMediaDownload)
// into the shared media directory under that same id, when the settings'
// media.auto_download lists their type, so GET /v1/media/{id} serves them
// as the original did; GET /v1/media/{id} fetches one it does not have
// (another type, or a fetch that failed). A network whose messages carry
// links (the simulated network) answers ErrUnsupported and nothing is
// fetched. A fetch that fails is logged and the callback goes on without
// it: a webhook is never held back for a medium.

const (
	// forgetTimeout bounds the call that tells the network an upload
	// was deleted (as the api stage bounds the network's REST calls).
	forgetTimeout = 10 * time.Second
	// mediaFetchTimeout bounds the fetches of one batch of callbacks.
	mediaFetchTimeout = 30 * time.Second
	// mediaFetchParallel bounds the fetches in flight for one batch.
	mediaFetchParallel = 4
)

// inboundMedia is the media id and type an inbound callback names, if any.
func inboundMedia(payload []byte) (id, typ string) {
	var p struct {
		Message map[string]json.RawMessage `json:"message"`
	}
	if json.Unmarshal(payload, &p) != nil {
		return "", ""
	}
	if json.Unmarshal(p.Message["type"], &typ) != nil {
		return "", ""
	}
	var m struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(p.Message[typ], &m) != nil {
		return "", ""
	}
	return m.ID, typ
}

// FetchInbound fetches the media of a batch's inbound callbacks (their
// payloads) whose type auto lists and that the media store does not have
// yet (an event pushed again finds its medium there).
func (m *Store) FetchInbound(ctx context.Context, inbound [][]byte, auto []string) {
	if len(auto) == 0 {
		return
	}
	type want struct{ id, typ string }
	var wants []want
	for _, payload := range inbound {
		id, typ := inboundMedia(payload)
		if id == "" || !slices.Contains(auto, typ) || !mediaIDRE.MatchString(id) {
			continue
		}
		if _, err := m.lookup(ctx, id); !errors.Is(err, sql.ErrNoRows) {
			continue // stored already, or the database is failing: leave it
		}
		wants = append(wants, want{id, typ})
	}
	if len(wants) == 0 {
		return
	}
	fctx, cancel := context.WithTimeout(ctx, mediaFetchTimeout)
	defer cancel()
	var wg sync.WaitGroup
	sem := make(chan struct{}, mediaFetchParallel)
	for _, w := range wants {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			m.fetchOne(fctx, w.id, w.typ)
		}()
	}
	wg.Wait()
}

// fetchOne downloads one medium through the plugin and stores it under
// id; it reports whether it did.
func (m *Store) fetchOne(ctx context.Context, id, typ string) bool {
	body, _ := json.Marshal(transport.MediaRef{ID: id})
	var out []byte
	err := transport.ErrNotRunning
	m.Plugins.With(func(t transport.Transport, _ uint64) { out, err = t.Call(ctx, transport.OpMediaDownload, body) })
	var mc transport.MediaContent
	if err == nil {
		err = json.Unmarshal(out, &mc)
	}
	switch {
	case errors.Is(err, transport.ErrUnsupported):
		return false // the network's media come as links
	case errors.Is(err, transport.ErrNoSuchItem):
		m.Log.Debug("the network has no such medium", "media_id", id, "err", err)
		return false
	case err != nil:
		m.Log.Warn("could not fetch an inbound medium", "media_id", id, "type", typ, "err", err)
		return false
	case len(mc.Data) == 0 || mc.MimeType == "":
		m.Log.Warn("the network answered an inbound medium without bytes or type", "media_id", id, "type", typ)
		return false
	}
	if _, code, details := m.saveAs(ctx, id, mc.MimeType, mc.Data); code != 0 {
		m.Log.Warn("could not store an inbound medium", "media_id", id, "details", details)
		return false
	}
	m.Log.Debug("inbound medium fetched", "media_id", id, "type", typ, "bytes", len(mc.Data))
	return true
}

// fetchOnRequest fetches a network medium that GET /v1/media/{id} asks
// for and the store does not have (its type was not in auto_download, or
// fetching it then failed), as the original fetched media on request.
// Our own ids (UUIDs) are never the network's.
func (m *Store) fetchOnRequest(ctx context.Context, id string) bool {
	if strings.Contains(id, "-") {
		return false
	}
	fctx, cancel := context.WithTimeout(ctx, mediaFetchTimeout)
	defer cancel()
	return m.fetchOne(fctx, id, "")
}

// forgetAtNetwork tells the network that upload id was deleted, so it
// drops the copy it took to send it (transport.OpMediaDelete); a network
// without one answers ErrUnsupported. Best effort: the API has answered.
func (m *Store) forgetAtNetwork(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), forgetTimeout)
	defer cancel()
	body, _ := json.Marshal(transport.MediaRef{ID: id})
	err := transport.ErrNotRunning
	m.Plugins.With(func(t transport.Transport, _ uint64) { _, err = t.Call(ctx, transport.OpMediaDelete, body) })
	if err != nil && !errors.Is(err, transport.ErrUnsupported) {
		m.Log.Warn("could not delete the network's copy of a deleted medium", "media_id", id, "err", err)
	}
}
