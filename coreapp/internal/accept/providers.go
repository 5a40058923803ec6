package accept

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sync"
	"time"

	"github.com/multiconnect/multiconnect/coreapp/internal/media"
	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/settings"
)

// Media by provider: a media object (image, audio, video, document,
// sticker, a template's header parameter...) may name a configured media
// provider beside its link, `"provider": {"name": "..."}`. The coreapp
// then fetches the link itself, with the provider's basic or bearer
// credentials, when it accepts the message, stores the bytes as an upload
// and sends the network the message with that upload's id instead of the
// link: the network never sees the credentials nor needs them. A name no
// provider has is refused with 1009, as is a link that cannot be fetched
// with it; nothing is stored then.

// providerFetchTimeout bounds one fetch: under the gateway's 20 s
// response timeout, so the client gets our answer rather than a 502.
const providerFetchTimeout = 15 * time.Second

// providerCache holds the media providers as of a settings version, so a
// message naming a provider costs no query unless the settings changed.
type providerCache struct {
	db       *sql.DB
	settings *settings.Cache
	client   *http.Client

	mu      sync.Mutex
	version int64 // settings_version byName was read at; -1 before the first load
	byName  map[string]settings.Provider
}

func newProviderCache(db *sql.DB, s *settings.Cache) *providerCache {
	// http.Client drops Authorization on a redirect to another host, so
	// credentials only ever go to the link's own host.
	return &providerCache{db: db, settings: s, version: -1, client: &http.Client{Timeout: providerFetchTimeout}}
}

// lookup returns the provider name. A name missing from a current cache is
// read again once: a provider POSTed a moment ago may not have reached this
// coreapp's settings poll yet.
func (p *providerCache) lookup(ctx context.Context, name string) (settings.Provider, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.settings.Version()
	fresh := false
	if p.version != v || p.byName == nil {
		if err := p.load(ctx, v); err != nil {
			return settings.Provider{}, false, err
		}
		fresh = true
	}
	pr, ok := p.byName[name]
	if !ok && !fresh {
		if err := p.load(ctx, v); err != nil {
			return settings.Provider{}, false, err
		}
		pr, ok = p.byName[name]
	}
	return pr, ok, nil
}

func (p *providerCache) load(ctx context.Context, version int64) error {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	list, err := settings.LoadProviders(qctx, p.db)
	if err != nil {
		return err
	}
	p.byName = make(map[string]settings.Provider, len(list))
	for _, pr := range list {
		p.byName[pr.Name] = pr
	}
	p.version = version
	return nil
}

// fetch GETs link with pr's credentials and returns the media's type and
// bytes (at most media.MaxSize).
func (p *providerCache) fetch(ctx context.Context, pr settings.Provider, link string) (string, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, providerFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, link, nil)
	if err != nil {
		return "", nil, err
	}
	switch {
	case pr.Config.Basic != nil:
		req.SetBasicAuth(pr.Config.Basic.Username, pr.Config.Basic.Password)
	case pr.Config.Bearer != "":
		req.Header.Set("Authorization", "Bearer "+pr.Config.Bearer)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return "", nil, fmt.Errorf("the server answered HTTP %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, media.MaxSize+1))
	if err != nil {
		return "", nil, err
	}
	if len(body) > media.MaxSize {
		return "", nil, fmt.Errorf("the media is larger than %d bytes", media.MaxSize)
	}
	if len(body) == 0 {
		return "", nil, fmt.Errorf("the server answered an empty body")
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt == "" {
		mt, _, _ = mime.ParseMediaType(http.DetectContentType(body))
	}
	return mt, body, nil
}

// providerMedia fetches every media object of msg that names a provider
// and rewrites msg's network copy (Body, never BodyHash: a retry is still
// the same message) to send the stored uploads by id.
func (a *Acceptor) providerMedia(ctx context.Context, msg *outMessage) (code int, details string) {
	if !bytes.Contains(msg.Body, []byte(`"provider"`)) {
		return 0, ""
	}
	dec := json.NewDecoder(bytes.NewReader(msg.Body))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return apierror.RequestNotValid, "the request body is not valid JSON"
	}
	var refs []map[string]any
	collectProviderMedia(doc, &refs)
	if len(refs) == 0 {
		return 0, ""
	}
	for _, m := range refs {
		prov, _ := m["provider"].(map[string]any)
		name, _ := prov["name"].(string)
		if name == "" {
			return apierror.ParameterInvalid, `provider must be an object with a name, {"name": "..."}`
		}
		if _, hasID := m["id"]; hasID {
			return apierror.ParameterInvalid, "provider applies to a media link, not to an uploaded id"
		}
		link, _ := m["link"].(string)
		if link == "" {
			return apierror.ParameterMissing, "link is required with provider " + name
		}
		pr, ok, err := a.providers.lookup(ctx, name)
		if err != nil {
			a.DBError("load media providers", err)
			return apierror.ServiceUnavailable, "could not read the media providers"
		}
		if !ok {
			return apierror.ParameterInvalid, fmt.Sprintf("media provider %q is not configured (POST /v1/settings/application/media/providers)", name)
		}
		mt, body, err := a.providers.fetch(ctx, pr, link)
		if err != nil {
			a.Log.Warn("could not fetch media with a provider", "provider", name, "err", err)
			return apierror.ParameterInvalid, fmt.Sprintf("could not fetch the link with media provider %q: %v", name, err)
		}
		id, code, details := a.Media.Save(ctx, mt, body)
		if code != 0 {
			return code, details
		}
		delete(m, "link")
		delete(m, "provider")
		m["id"] = id
		msg.MediaIDs = append(msg.MediaIDs, id)
	}
	// Encoded without HTML escaping, so captions keep their < > & as sent.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return apierror.GenericError, "could not encode the message"
	}
	msg.Body = bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	return 0, ""
}

// collectProviderMedia finds every object of v that has a provider beside
// a link or id: the media objects, wherever a message type puts them.
func collectProviderMedia(v any, out *[]map[string]any) {
	switch x := v.(type) {
	case map[string]any:
		if _, ok := x["provider"]; ok {
			_, link := x["link"]
			_, id := x["id"]
			if link || id {
				*out = append(*out, x)
				return
			}
		}
		for _, e := range x {
			collectProviderMedia(e, out)
		}
	case []any:
		for _, e := range x {
			collectProviderMedia(e, out)
		}
	}
}
