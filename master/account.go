package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"sync"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/openapi"
	"github.com/multiconnect/multiconnect/internal/routetable"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Account-level settings (the profile's About text and photo, the business
// profile, two-step verification) belong to the account at the messaging
// network, so each is told to the network through the transport plugin
// (each network applies it its own way) and, once the network accepted
// it, stored as a row of the settings table in the master's fenced
// transaction. GETs read the row, so a setting survives a failover of the
// primary master, and a backup carries it. Bad input is refused before
// the network is asked, so it changes nothing anywhere.

// Settings rows of the account-level settings.
const (
	rowAbout    = "account.profile.about"
	rowPhoto    = "account.profile.photo"
	rowBusiness = "account.business.profile"
	rowTwoStep  = "account.two_step"
)

// accountMu serializes account-level changes, backups and restores on this
// master: a business profile update reads, merges and writes, and the
// network must see changes in the order they are stored.
var accountMu sync.Mutex

// storedPhoto is the rowPhoto document.
type storedPhoto struct {
	ContentType string `json:"content_type"`
	Data        []byte `json:"data"`
	Link        string `json:"link,omitempty"`
}

// accountRoutes adds the account-level settings and backup routes.
func (m *Master) accountRoutes(mux *routetable.Mux) {
	mux.HandleFunc("GET /v1/settings/profile/about", m.primaryOnly(m.getAbout))
	mux.HandleFunc("PATCH /v1/settings/profile/about", m.primaryOnly(m.patchAbout))
	mux.HandleFunc("GET /v1/settings/profile/photo", m.primaryOnly(m.getPhoto))
	mux.HandleFunc("POST /v1/settings/profile/photo", m.primaryOnly(m.postPhoto))
	mux.HandleFunc("DELETE /v1/settings/profile/photo", m.primaryOnly(m.deletePhoto))
	mux.HandleFunc("GET /v1/settings/business/profile", m.primaryOnly(m.getBusiness))
	mux.HandleFunc("POST /v1/settings/business/profile", m.primaryOnly(m.postBusiness))
	mux.HandleFunc("POST /v1/settings/account/two-step", m.primaryOnly(m.postTwoStep))
	mux.HandleFunc("DELETE /v1/settings/account/two-step", m.primaryOnly(m.deleteTwoStep))
	mux.HandleFunc("POST /v1/settings/backup", m.primaryOnly(m.backup))
	mux.HandleFunc("POST /v1/settings/restore", m.primaryOnly(m.restore))
}

// readRow reads a settings row into v; it reports false when there is none.
func readRow(ctx context.Context, q cluster.Querier, name string, v any) (bool, error) {
	var raw string
	err := q.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = ?`, name).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", name, err)
	}
	if err := json.Unmarshal([]byte(raw), v); err != nil {
		return false, fmt.Errorf("read %s: stored value is not valid: %w", name, err)
	}
	return true, nil
}

// writeRow stores v as the settings row name (nil deletes it).
func writeRow(ctx context.Context, tx *sql.Tx, name string, v any) error {
	if v == nil {
		if _, err := tx.ExecContext(ctx, `DELETE FROM settings WHERE name = ?`, name); err != nil {
			return fmt.Errorf("delete %s: %w", name, err)
		}
		return nil
	}
	b, err := asciiJSON(v)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO settings (name, value, updated_at) VALUES (?, ?, NOW(6))
		ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = NOW(6)`, name, string(b)); err != nil {
		return fmt.Errorf("store %s: %w", name, err)
	}
	return nil
}

// asciiJSON encodes v with every non-ASCII character escaped (\uXXXX,
// surrogate pairs beyond the BMP): the settings table's character set may
// not hold all of Unicode (utf8mb3 refuses emoji), while JSON's escapes
// carry any text through any of them.
func asciiJSON(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	for _, r := range string(b) {
		switch {
		case r < utf8.RuneSelf:
			out.WriteRune(r)
		case r > 0xFFFF:
			hi, lo := utf16.EncodeRune(r)
			fmt.Fprintf(&out, "\\u%04x\\u%04x", hi, lo)
		default:
			fmt.Fprintf(&out, "\\u%04x", r)
		}
	}
	return out.Bytes(), nil
}

// callNetwork performs op at the network through the plugin.
func (m *Master) callNetwork(ctx context.Context, op string, body any) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	nctx, cancel := context.WithTimeout(ctx, networkTimeout)
	defer cancel()
	var res []byte
	err = m.withTransport(nctx, func(t transport.Transport) error {
		var err error
		res, err = t.Call(nctx, op, b)
		return err
	})
	return res, err
}

// networkRefused answers an error from callNetwork; nothing was stored.
func networkRefused(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, transport.ErrInvalidValue):
		apierror.Write(w, apierror.ParameterInvalid, "the messaging network refused the value: "+err.Error())
	case errors.Is(err, transport.ErrUnsupported):
		apierror.Write(w, apierror.NotFound, "this messaging network has no such setting: "+err.Error())
	default:
		networkUnavailable(w, err)
	}
}

// applySetting tells the network op with body, then stores row (nil
// deletes it) in a fenced transaction; store builds the row from the
// network's answer. The caller holds accountMu.
func (m *Master) applySetting(w http.ResponseWriter, r *http.Request, op string, body any, store func(res []byte) (string, any)) {
	ctx := r.Context()
	res, err := m.callNetwork(ctx, op, body)
	if err != nil {
		networkRefused(w, err)
		return
	}
	name, row := store(res)
	if err := m.lease.fenced(ctx, func(tx *sql.Tx) error { return writeRow(ctx, tx, name, row) }); err != nil {
		// The network has it; sending the request again stores it (the
		// network takes the same value again), which is what the gateway
		// does with a 1017.
		writeErr(w, err)
		return
	}
	m.log.Info("account setting changed", "op", op, "row", name)
	writeJSON(w, http.StatusOK, struct{}{})
}

// validBody reads a JSON body of at most limit bytes and validates it
// against the named schema of the API's description.
func validBody(w http.ResponseWriter, r *http.Request, schema string, limit int64) ([]byte, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		apierror.Write(w, apierror.RequestNotValid, "the body could not be read: "+err.Error())
		return nil, false
	}
	if int64(len(body)) > limit {
		apierror.Write(w, apierror.ParameterInvalid, fmt.Sprintf("the body is larger than %d bytes", limit))
		return nil, false
	}
	if len(bytes.TrimSpace(body)) == 0 {
		apierror.Write(w, apierror.RequestNotValid, "a JSON object is required")
		return nil, false
	}
	if inv := openapi.Validate(schema, body); inv != nil {
		apierror.Write(w, inv.Code, inv.Details)
		return nil, false
	}
	return body, true
}

// decodeValid reads a JSON body validated against the named schema into a
// T; on false the answer was written.
func decodeValid[T any](w http.ResponseWriter, r *http.Request, schema string) (T, bool) {
	var v T
	body, ok := validBody(w, r, schema, 1<<20)
	if ok {
		json.Unmarshal(body, &v) // validated: it decodes
	}
	return v, ok
}

// setRow tells the network op with v and stores v as row; a nil v tells
// the network an empty body and deletes the row.
func (m *Master) setRow(w http.ResponseWriter, r *http.Request, op, row string, v any) {
	body := v
	if v == nil {
		body = struct{}{}
	}
	accountMu.Lock()
	defer accountMu.Unlock()
	m.applySetting(w, r, op, body, func([]byte) (string, any) { return row, v })
}

func (m *Master) getAbout(w http.ResponseWriter, r *http.Request) {
	var a transport.ProfileAbout
	if _, err := readRow(r.Context(), m.db, rowAbout, &a); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"settings": map[string]any{"profile": map[string]any{"about": a}}})
}

func (m *Master) patchAbout(w http.ResponseWriter, r *http.Request) {
	if a, ok := decodeValid[transport.ProfileAbout](w, r, "ProfileAbout"); ok {
		m.setRow(w, r, transport.OpSetProfileAbout, rowAbout, a)
	}
}

func (m *Master) getPhoto(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	if format != "" && format != "link" {
		apierror.Write(w, apierror.ParameterInvalid, fmt.Sprintf("format: %q; leave it out for the image, or link", format))
		return
	}
	var p storedPhoto
	found, err := readRow(r.Context(), m.db, rowPhoto, &p)
	switch {
	case err != nil:
		writeErr(w, err)
		return
	case !found:
		apierror.Write(w, apierror.NotFound, "no profile photo is set")
		return
	}
	if format == "link" {
		if p.Link == "" {
			apierror.Write(w, apierror.NotFound, "the messaging network published no link for the profile photo")
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"settings": map[string]any{"profile": map[string]any{"photo": map[string]string{"link": p.Link}}}})
		return
	}
	w.Header().Set("Content-Type", p.ContentType)
	w.WriteHeader(http.StatusOK)
	w.Write(p.Data)
}

// photoUpload reads the image of POST /v1/settings/profile/photo: the raw
// body with an image content type, as the original documented, or the
// file of a multipart form (the first file part, "file" by convention).
func photoUpload(r *http.Request) ([]byte, error) {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		mt = ""
	}
	var src io.Reader = r.Body
	if mt == "multipart/form-data" {
		mr := multipart.NewReader(r.Body, params["boundary"])
		for {
			part, err := mr.NextPart()
			if err == io.EOF {
				return nil, &inputError{apierror.ParameterMissing, "the multipart form has no file part (send the image as the file field)"}
			}
			if err != nil {
				return nil, &inputError{apierror.RequestNotValid, "the multipart form cannot be read: " + err.Error()}
			}
			if part.FileName() != "" || part.FormName() == "file" {
				src = part
				break
			}
		}
	}
	data, err := io.ReadAll(io.LimitReader(src, maxPhotoUpload+1))
	switch {
	case err != nil:
		return nil, &inputError{apierror.RequestNotValid, "the image could not be read: " + err.Error()}
	case len(data) == 0:
		return nil, &inputError{apierror.ParameterMissing, "the image is required: send it as the body with Content-Type image/jpeg or image/png"}
	case len(data) > maxPhotoUpload:
		return nil, &inputError{apierror.ParameterInvalid, fmt.Sprintf("the image is larger than %d bytes", maxPhotoUpload)}
	}
	return data, nil
}

func (m *Master) postPhoto(w http.ResponseWriter, r *http.Request) {
	data, err := photoUpload(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	photo, err := makeProfilePhoto(data)
	if err != nil {
		writeErr(w, err)
		return
	}
	p := transport.ProfilePhoto{ContentType: "image/jpeg", Data: photo}
	accountMu.Lock()
	defer accountMu.Unlock()
	m.applySetting(w, r, transport.OpSetProfilePhoto, p, func(res []byte) (string, any) {
		var pr transport.ProfilePhotoResult
		json.Unmarshal(res, &pr) // a network without a link answers {}
		return rowPhoto, storedPhoto{ContentType: p.ContentType, Data: photo, Link: pr.Link}
	})
}

func (m *Master) deletePhoto(w http.ResponseWriter, r *http.Request) {
	m.setRow(w, r, transport.OpDeleteProfilePhoto, rowPhoto, nil)
}

func (m *Master) getBusiness(w http.ResponseWriter, r *http.Request) {
	var b transport.BusinessProfile
	if _, err := readRow(r.Context(), m.db, rowBusiness, &b); err != nil {
		writeErr(w, err)
		return
	}
	if b.Websites == nil {
		b.Websites = []string{}
	}
	// Every field, "" when unset, as the original showed the profile.
	doc := map[string]any{"address": b.Address, "description": b.Description, "email": b.Email,
		"vertical": b.Vertical, "websites": b.Websites}
	writeJSON(w, http.StatusOK, map[string]any{"settings": map[string]any{"business": map[string]any{"profile": doc}}})
}

func (m *Master) postBusiness(w http.ResponseWriter, r *http.Request) {
	patch, ok := decodeValid[map[string]json.RawMessage](w, r, "BusinessProfile")
	if !ok {
		return
	}
	accountMu.Lock()
	defer accountMu.Unlock()
	var cur transport.BusinessProfile
	_, err := readRow(r.Context(), m.db, rowBusiness, &cur)
	if err != nil {
		writeErr(w, err)
		return
	}
	next := cur
	for k, v := range patch {
		var dst any
		switch k {
		case "address":
			dst = &next.Address
		case "description":
			dst = &next.Description
		case "email":
			dst = &next.Email
		case "vertical":
			dst = &next.Vertical
		case "websites":
			dst = &next.Websites
		}
		json.Unmarshal(v, dst) // validated above
	}
	if cur.Vertical != "" && next.Vertical == "" {
		apierror.Write(w, apierror.ParameterInvalid, "vertical: the business vertical cannot be set back to an empty value once set")
		return
	}
	// The network is told the whole profile as merged here; accountMu
	// keeps another update from coming in between.
	m.applySetting(w, r, transport.OpSetBusinessProfile, next, func([]byte) (string, any) { return rowBusiness, next })
}

func (m *Master) postTwoStep(w http.ResponseWriter, r *http.Request) {
	// The PIN is kept (in the settings row, never shown by any GET) so a
	// restore can set it at another cluster's network.
	if ts, ok := decodeValid[transport.TwoStep](w, r, "TwoStepPin"); ok {
		m.setRow(w, r, transport.OpSetTwoStep, rowTwoStep, ts)
	}
}

func (m *Master) deleteTwoStep(w http.ResponseWriter, r *http.Request) {
	m.setRow(w, r, transport.OpDeleteTwoStep, rowTwoStep, nil)
}
