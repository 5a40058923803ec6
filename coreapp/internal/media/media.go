// Package media is the coreapp's media store: uploads (POST, GET and
// DELETE /v1/media) kept as files in the media directory shared by all
// nodes with a row each in MySQL, the uploads a message names (CheckIDs,
// for the accept stage) and provider links it fetched (Save), and inbound
// media fetched from the network for the events stage (FetchInbound).
//
// It depends on Deps: the database, the plugin supervisor (network media)
// and the directory.
package media

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/coreapp/internal/reply"
	"github.com/multiconnect/multiconnect/internal/apierror"
)

// MaxSize is the original's upload limit.
const MaxSize = 100 << 20

// defaultMediaDir is where the original kept media, shared by every node.
const defaultMediaDir = "/usr/local/wamedia"

// mediaIDRE is a media id: ours (a UUID, the original's shape) or the
// network's for an inbound medium fetched under its own id (the Cloud
// API's are digits; see inboundmedia.go).
var mediaIDRE = regexp.MustCompile(`^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9]{1,40})$`)

// Store keeps uploads in the media directory shared by all nodes
// (MC_MEDIA_DIR; NFS in production), with a row per upload in MySQL so any
// node can tell whether an id exists.
type Store struct {
	Deps
	dir string
}

// New makes the store in dir (MC_MEDIA_DIR; defaultMediaDir when empty).
func New(d Deps, dir string) (*Store, error) {
	if dir == "" {
		dir = defaultMediaDir
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("media directory (MC_MEDIA_DIR) %s: %w", dir, err)
	}
	return &Store{Deps: d, dir: dir}, nil
}

func (m *Store) path(id string) string { return filepath.Join(m.dir, id) }

// Upload serves POST /v1/media: the raw body is the file, Content-Type its
// type. The file is written and synced before the row commits, so an id a
// client holds always has its bytes.
func (m *Store) Upload(ctx *fasthttp.RequestCtx) {
	ct := string(ctx.Request.Header.ContentType())
	if ct == "" {
		reply.Error(ctx, apierror.ParameterMissing, "Content-Type is required: the media's MIME type")
		return
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt == "application/json" || mt == "application/x-www-form-urlencoded" || strings.HasPrefix(mt, "multipart/") {
		reply.Error(ctx, apierror.ParameterInvalid, fmt.Sprintf("Content-Type %q is not a media type: send the file as the raw body", ct))
		return
	}
	body := ctx.PostBody()
	if len(body) == 0 {
		reply.Error(ctx, apierror.ParameterMissing, "the request body (the media file) is empty")
		return
	}
	if len(body) > MaxSize {
		reply.Error(ctx, apierror.ParameterInvalid, fmt.Sprintf("media is %d bytes; the limit is %d", len(body), MaxSize))
		return
	}
	id, code, details := m.Save(ctx, mt, body)
	if code != 0 {
		reply.Error(ctx, code, details)
		return
	}
	reply.JSON(ctx, fasthttp.StatusCreated, map[string]any{"media": []map[string]string{{"id": id}}})
}

// Save stores body as a new upload of type mt and returns its id, or the
// API code and details of the failure (nothing is left behind then).
func (m *Store) Save(ctx context.Context, mt string, body []byte) (id string, code int, details string) {
	return m.saveAs(ctx, newMediaID(), mt, body)
}

// saveAs is save under a given id (an inbound medium's, inboundmedia.go).
func (m *Store) saveAs(ctx context.Context, id, mt string, body []byte) (string, int, string) {
	sum := sha256.Sum256(body)
	if err := writeSynced(m.path(id), body); err != nil {
		m.Log.Error("could not store media", "err", err)
		return "", apierror.GenericError, "could not store the media"
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := m.DB.ExecContext(qctx, `INSERT INTO media (id, mime_type, size, sha256, created_at) VALUES (?, ?, ?, ?, NOW(6))
		ON DUPLICATE KEY UPDATE id = id`, // an inbound medium fetched twice (its bytes are the same)
		id, mt, len(body), hex.EncodeToString(sum[:])); err != nil {
		os.Remove(m.path(id))
		m.DBError("store media", err)
		return "", apierror.ServiceUnavailable, "could not record the media"
	}
	return id, 0, ""
}

func writeSynced(path string, b []byte) error {
	tmp := path + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

func (m *Store) lookup(ctx context.Context, id string) (mimeType string, err error) {
	if !mediaIDRE.MatchString(id) {
		return "", sql.ErrNoRows
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = m.DB.QueryRowContext(qctx, `SELECT mime_type FROM media WHERE id = ?`, id).Scan(&mimeType)
	return mimeType, err
}

// Download serves GET /v1/media/{id}.
func (m *Store) Download(ctx *fasthttp.RequestCtx, id string) {
	mt, err := m.lookup(ctx, id)
	if errors.Is(err, sql.ErrNoRows) && mediaIDRE.MatchString(id) && m.fetchOnRequest(ctx, id) { // inboundmedia.go
		mt, err = m.lookup(ctx, id)
	}
	if errors.Is(err, sql.ErrNoRows) {
		reply.Error(ctx, apierror.NotFound, "no media with id "+id)
		return
	}
	if err != nil {
		m.DBError("look up media", err)
		reply.Error(ctx, apierror.ServiceUnavailable, "could not look up the media")
		return
	}
	b, err := os.ReadFile(m.path(id))
	if err != nil {
		m.Log.Error("media row without its file", "id", id, "err", err)
		reply.Error(ctx, apierror.NotFound, "the media's file is missing from the media directory")
		return
	}
	ctx.SetContentType(mt)
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetBody(b)
}

// Remove serves DELETE /v1/media/{id}.
func (m *Store) Remove(ctx *fasthttp.RequestCtx, id string) {
	if !mediaIDRE.MatchString(id) {
		reply.Error(ctx, apierror.NotFound, "no media with id "+id)
		return
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := m.DB.ExecContext(qctx, `DELETE FROM media WHERE id = ?`, id)
	if err != nil {
		m.DBError("delete media", err)
		reply.Error(ctx, apierror.ServiceUnavailable, "could not delete the media")
		return
	}
	if n, _ := res.RowsAffected(); n == 0 {
		reply.Error(ctx, apierror.NotFound, "no media with id "+id)
		return
	}
	if err := os.Remove(m.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.Log.Warn("media row deleted but its file remains", "id", id, "err", err)
	}
	go m.forgetAtNetwork(id)
	reply.JSON(ctx, fasthttp.StatusOK, map[string]any{})
}

// CheckIDs returns 1006 when a message names media that does not exist.
func (m *Store) CheckIDs(ctx context.Context, ids []string) (code int, details string) {
	for _, id := range ids {
		_, err := m.lookup(ctx, id)
		if errors.Is(err, sql.ErrNoRows) {
			return apierror.NotFound, "media " + id + " not found: upload it with POST /v1/media first"
		}
		if err != nil {
			m.DBError("look up media", err)
			return apierror.ServiceUnavailable, "could not look up the media"
		}
	}
	return 0, ""
}

// newMediaID returns a random UUID, the shape of the original's media ids.
func newMediaID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
