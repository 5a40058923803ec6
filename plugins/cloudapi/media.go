package cloudapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Media both ways. The API's uploads are files in the shared media
// directory named by our id; the Cloud API sends media by its own id, so a
// medium is uploaded (POST /{phone-number-id}/media) the first time a
// message names it, and the Cloud id is kept in cloudapi_media for the
// next sends, for less than the 30 days Meta keeps an upload. Inbound
// media are fetched by id: GET /{media-id} answers a URL, valid for 5
// minutes, fetched with the access token.

// cloudMediaReuseDays is how long an upload's Cloud id is used again:
// Meta keeps uploaded media 30 days; a day less leaves room for a send
// that starts just before the limit.
const cloudMediaReuseDays = 29

// mediaIDRE is a media id that is safe in a URL path and a file name: our
// ids are UUIDs, the Cloud API's digits.
var mediaIDRE = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$`)

// mediaInfo is the answer of GET /{media-id}.
type mediaInfo struct {
	URL      string    `json:"url"`
	MimeType string    `json:"mime_type"`
	SHA256   string    `json:"sha256"`
	FileSize flexCount `json:"file_size"`
	ID       string    `json:"id"`
}

// flexCount reads a count written as a number or as a string of digits
// (Meta's description has file_size as a string).
type flexCount int64

func (n *flexCount) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*n = -1
		return nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("file_size %s is not a count", b)
	}
	*n = flexCount(v)
	return nil
}

// downloadMedia fetches an inbound medium by its Cloud id.
func (o *operations) downloadMedia(ctx context.Context, id string) (transport.MediaContent, error) {
	const op = transport.OpMediaDownload
	var mc transport.MediaContent
	if !mediaIDRE.MatchString(id) {
		return mc, fmt.Errorf("%s: %w: media id %q", op, transport.ErrNoSuchItem, id)
	}
	info := mediaInfo{FileSize: -1}
	if err := o.do(ctx, op, graph.Sender{}, http.MethodGet, "/"+id+"?phone_number_id="+url.QueryEscape(o.g.PhoneNumberID()), nil, &info); err != nil {
		return mc, err
	}
	if info.FileSize > transport.MaxMediaContent {
		return mc, fmt.Errorf("%s: %w: media %s is %d bytes; the plugin hands on at most %d", op, transport.ErrInvalidValue, id, info.FileSize, transport.MaxMediaContent)
	}
	if !strings.HasPrefix(info.URL, "https://") && !strings.HasPrefix(info.URL, "http://") {
		return mc, fmt.Errorf("%s: the Graph API answered media %s without a URL", op, id)
	}
	var data []byte
	if err := o.mapError(op, o.g.Do(ctx, graph.Sender{}, http.MethodGet, info.URL, "", nil, &data)); err != nil {
		return mc, err
	}
	if info.FileSize >= 0 && int64(len(data)) != int64(info.FileSize) {
		return mc, fmt.Errorf("%s: media %s: got %d bytes of %d", op, id, len(data), info.FileSize)
	}
	if !sumMatches(info.SHA256, data) {
		return mc, fmt.Errorf("%s: media %s: the bytes do not match the sha256 the Graph API gave", op, id)
	}
	mc.Data, mc.MimeType = data, info.MimeType
	if mc.MimeType == "" {
		mc.MimeType = http.DetectContentType(data)
	}
	return mc, nil
}

// sumMatches checks data against a SHA-256 given as hex or base64 (Meta
// writes it either way in places); an empty or unreadable one checks
// nothing.
func sumMatches(given string, data []byte) bool {
	sum := sha256.Sum256(data)
	if b, err := hex.DecodeString(given); err == nil && len(b) == sha256.Size {
		return bytes.Equal(b, sum[:])
	}
	if b, err := base64.StdEncoding.DecodeString(given); err == nil && len(b) == sha256.Size {
		return bytes.Equal(b, sum[:])
	}
	return true
}

// UploadMedia uploads the file at path as a medium of type mime
// (multipart, as Meta's description has it: file, messaging_product, and
// type) and returns its Cloud media id.
func (o *operations) UploadMedia(ctx context.Context, who graph.Sender, path, mime string) (string, error) {
	const op = "upload media"
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.WriteField("messaging_product", messagingProduct)
	_ = mw.WriteField("type", mime)
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename=%q`, filepath.Base(path)))
	h.Set("Content-Type", mime)
	fw, err := mw.CreatePart(h)
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	fw.Write(data)
	if err := mw.Close(); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	var res struct {
		ID string `json:"id"`
	}
	if err := o.mapError(op, o.g.Do(ctx, who, http.MethodPost, "/"+o.g.PhoneNumberID()+"/media", mw.FormDataContentType(), body.Bytes(), &res)); err != nil {
		return "", err
	}
	if res.ID == "" {
		return "", fmt.Errorf("%s: the Graph API answered no media id", op)
	}
	return res.ID, nil
}

// MediaID is the Cloud media id of our upload id, uploading it the first
// time (and again once the last upload is too old to be sent). It fails
// with ErrNoSuchItem when we have no such upload.
func (o *operations) MediaID(ctx context.Context, who graph.Sender, ourID string) (string, error) {
	const op = "media id"
	if !mediaIDRE.MatchString(ourID) {
		return "", fmt.Errorf("%s: %w: media %q", op, transport.ErrNoSuchItem, ourID)
	}
	var mime string
	if o.db != nil {
		var cloudID string
		err := o.db.QueryRowContext(ctx, `SELECT cloud_id FROM cloudapi_media WHERE media_id = ? AND uploaded_at > NOW(6) - INTERVAL `+
			strconv.Itoa(cloudMediaReuseDays)+` DAY`, ourID).Scan(&cloudID)
		if err == nil {
			return cloudID, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return "", fmt.Errorf("%s: read the media cache: %w", op, err)
		}
		err = o.db.QueryRowContext(ctx, `SELECT mime_type FROM media WHERE id = ?`, ourID).Scan(&mime)
		if errors.Is(err, sql.ErrNoRows) {
			return "", fmt.Errorf("%s: %w: media %s", op, transport.ErrNoSuchItem, ourID)
		}
		if err != nil {
			return "", fmt.Errorf("%s: read the media's type: %w", op, err)
		}
	}
	path := filepath.Join(o.mediaDir, ourID)
	if mime == "" {
		head, err := readHead(path)
		if err != nil {
			return "", fmt.Errorf("%s: %w: media %s: %v", op, transport.ErrNoSuchItem, ourID, err)
		}
		mime = http.DetectContentType(head)
	}
	cloudID, err := o.UploadMedia(ctx, who, path, mime)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%s: %w: media %s has no file in the media directory", op, transport.ErrNoSuchItem, ourID)
	}
	if err != nil {
		return "", err
	}
	if o.db != nil {
		if _, err := o.db.ExecContext(ctx, `INSERT INTO cloudapi_media (media_id, cloud_id, uploaded_at) VALUES (?, ?, NOW(6))
			ON DUPLICATE KEY UPDATE cloud_id = VALUES(cloud_id), uploaded_at = VALUES(uploaded_at)`, ourID, cloudID); err != nil {
			// The upload stands; the next send uploads again.
			o.log.Warn("could not remember a Cloud media id", "media_id", ourID, "err", err)
		}
	}
	return cloudID, nil
}

func readHead(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 512)
	n, err := f.Read(b)
	if n == 0 && err != nil {
		return nil, err
	}
	return b[:n], nil
}

// DeleteMedia deletes the Cloud copy of our upload ourID (DELETE
// /{media-id}), if it has one, and forgets it. A copy the Graph API no
// longer has is as good as deleted.
func (o *operations) DeleteMedia(ctx context.Context, ourID string) error {
	const op = transport.OpMediaDelete
	if o.db == nil || !mediaIDRE.MatchString(ourID) {
		return nil
	}
	var cloudID string
	err := o.db.QueryRowContext(ctx, `SELECT cloud_id FROM cloudapi_media WHERE media_id = ?`, ourID).Scan(&cloudID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: read the media cache: %w", op, err)
	}
	var res json.RawMessage
	err = o.do(ctx, op, graph.Sender{}, http.MethodDelete, "/"+cloudID+"?phone_number_id="+url.QueryEscape(o.g.PhoneNumberID()), nil, &res)
	if err != nil && !errors.Is(err, transport.ErrNoSuchItem) {
		return err
	}
	if _, err := o.db.ExecContext(ctx, `DELETE FROM cloudapi_media WHERE media_id = ?`, ourID); err != nil {
		return fmt.Errorf("%s: forget the Cloud copy: %w", op, err)
	}
	return nil
}
