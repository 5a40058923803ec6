package cloudapi

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"mime/multipart"
	"net/textproto"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"
)

// mediaTTL is how long a Cloud API media id is used after its upload:
// Meta keeps uploaded media 30 days; a day less leaves room.
const mediaTTL = 29 * 24 * time.Hour

// mediaCache maps our media ids (files in the shared media directory) to
// the Cloud API media ids they were uploaded as, so a file sent many times
// is uploaded once per plugin process (and again after mediaTTL).
type mediaCache struct {
	mu sync.Mutex
	m  map[string]cachedMedia
	// inflight makes concurrent sends of one file share its upload.
	inflight map[string]*sync.Mutex
}

type cachedMedia struct {
	id string
	at time.Time
}

func newMediaCache() *mediaCache {
	return &mediaCache{m: map[string]cachedMedia{}, inflight: map[string]*sync.Mutex{}}
}

// ourMediaID is the form of the coreapp's upload ids (coreapp/media.go).
var ourMediaID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// cloudMediaID returns the Cloud API media id of our upload id, uploading
// the file from the media directory (POST /{phone-number-id}/media) the
// first time. The coreapp accepted the message only if the id named an
// upload, so a file or row gone since is a *BadMessage.
func (t *Transport) cloudMediaID(ctx context.Context, id string) (string, error) {
	if !ourMediaID.MatchString(id) {
		return "", bad("media id %q is not an upload of this cluster", id)
	}
	c := t.media
	c.mu.Lock()
	if e, ok := c.m[id]; ok && time.Since(e.at) < mediaTTL {
		c.mu.Unlock()
		return e.id, nil
	}
	l := c.inflight[id]
	if l == nil {
		l = &sync.Mutex{}
		c.inflight[id] = l
	}
	c.mu.Unlock()
	l.Lock()
	defer l.Unlock()
	c.mu.Lock()
	if e, ok := c.m[id]; ok && time.Since(e.at) < mediaTTL {
		c.mu.Unlock()
		return e.id, nil
	}
	c.mu.Unlock()

	mt, err := t.mediaType(ctx, id)
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(filepath.Join(t.cfg.MediaDir, id))
	if errors.Is(err, os.ErrNotExist) {
		return "", bad("media %s is no longer in the media directory", id)
	}
	if err != nil {
		return "", fmt.Errorf("read media %s: %w", id, err)
	}
	body, ct, err := mediaForm(id, mt, data)
	if err != nil {
		return "", err
	}
	var out struct {
		ID string `json:"id"`
	}
	if err := t.Do(ctx, "POST", "/"+t.cfg.PhoneNumberID+"/media", ct, body, &out); err != nil {
		return "", fmt.Errorf("upload media %s: %w", id, err)
	}
	if out.ID == "" {
		return "", fmt.Errorf("upload media %s: the Graph API answered without an id", id)
	}
	c.mu.Lock()
	c.m[id] = cachedMedia{id: out.ID, at: time.Now()}
	delete(c.inflight, id)
	c.mu.Unlock()
	t.log.Info("media uploaded to the Cloud API", "media", id, "cloud_media", out.ID, "bytes", len(data))
	return out.ID, nil
}

// mediaType is the MIME type the upload was stored with.
func (t *Transport) mediaType(ctx context.Context, id string) (string, error) {
	if t.db == nil {
		return "", errors.New("no database to read the media's type from")
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var mt string
	err := t.db.QueryRowContext(qctx, `SELECT mime_type FROM media WHERE id = ?`, id).Scan(&mt)
	if errors.Is(err, sql.ErrNoRows) {
		return "", bad("media %s was deleted", id)
	}
	if err != nil {
		return "", fmt.Errorf("read the type of media %s: %w", id, err)
	}
	return mt, nil
}

// mediaForm is the multipart body of a media upload: messaging_product,
// type and the file.
func mediaForm(id, mimeType string, data []byte) ([]byte, string, error) {
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	if err := w.WriteField("messaging_product", "whatsapp"); err != nil {
		return nil, "", err
	}
	if err := w.WriteField("type", mimeType); err != nil {
		return nil, "", err
	}
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename=%q`, id))
	h.Set("Content-Type", mimeType)
	p, err := w.CreatePart(h)
	if err != nil {
		return nil, "", err
	}
	if _, err := p.Write(data); err != nil {
		return nil, "", err
	}
	if err := w.Close(); err != nil {
		return nil, "", err
	}
	return buf.Bytes(), w.FormDataContentType(), nil
}
